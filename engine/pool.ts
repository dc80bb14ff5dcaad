/**
 * Size-bucketed GPU buffer pool with live/peak byte accounting.
 *
 * Buffers are reused by bucket size. Reuse is safe without fences because every use of a buffer is
 * recorded on the single queue in program order; uploads into a reused buffer are ordered by the engine
 * (it submits pending work before a `writeBuffer`).
 *
 * @module
 */

/** Memory counters of a {@link BufferPool}; all in bytes. */
export interface MemoryStats {
  /** Bytes of buffers currently handed out (bucket sizes). */
  liveBytes: number;
  /** Highest `liveBytes` since creation or the last {@link BufferPool.resetPeak}. */
  peakBytes: number;
  /** Bytes held in the free lists, ready for reuse. */
  pooledBytes: number;
  /** Buffers currently handed out. */
  liveBuffers: number;
  /** `createBuffer` calls so far (a measure of pool misses). */
  created: number;
}

const BUFFER_USAGE = 0x80 /* STORAGE */ | 0x04 /* COPY_SRC */ | 0x08; /* COPY_DST */

/** Rounds a byte size up to its bucket: 256-byte granularity below 4 KiB, then four buckets per power of
 * two (at most 25% slack). */
export function bucketSize(bytes: number): number {
  const n = Math.max(256, Math.ceil(bytes / 256) * 256);
  if (n <= 4096) return n;
  const pow = 2 ** Math.floor(Math.log2(n));
  const step = pow / 4;
  return Math.ceil(n / step) * step;
}

/** Larger buckets {@link BufferPool.acquire} looks in when its own has no free buffer. */
const REUSE_BUCKETS = 4;

/** A pool of storage buffers bucketed by size. */
export class BufferPool {
  #free = new Map<number, GPUBuffer[]>();
  #sizes = new WeakMap<GPUBuffer, number>();
  #stats: MemoryStats = { liveBytes: 0, peakBytes: 0, pooledBytes: 0, liveBuffers: 0, created: 0 };
  #created: GPUBuffer[] | null = null;

  /**
   * Creates an empty pool.
   *
   * @param device the device that owns the buffers
   */
  constructor(readonly device: GPUDevice) {}

  /**
   * Returns a buffer of at least `bytes` bytes (contents undefined): a free one of its bucket, else of one of
   * the next four buckets (at most twice as large; new memory costs llvmpipe page faults, about 3 ms per MB
   * on first use), else a new one.
   */
  acquire(bytes: number): GPUBuffer {
    let size = bucketSize(bytes);
    let buffer: GPUBuffer | undefined;
    for (let bucket = size, i = 0; i <= REUSE_BUCKETS && !buffer; bucket = bucketSize(bucket + 1), i++) {
      buffer = this.#free.get(bucket)?.pop();
      if (buffer) size = bucket;
    }
    if (buffer) {
      this.#stats.pooledBytes -= size;
    } else {
      buffer = this.device.createBuffer({ size, usage: BUFFER_USAGE });
      this.#sizes.set(buffer, size);
      this.#stats.created++;
      this.#created?.push(buffer);
    }
    this.#stats.liveBytes += size;
    this.#stats.liveBuffers++;
    if (this.#stats.liveBytes > this.#stats.peakBytes) this.#stats.peakBytes = this.#stats.liveBytes;
    return buffer;
  }

  /** Starts listing the buffers {@link acquire} creates; {@link takeCreated} returns them and stops. */
  listCreated(): void {
    this.#created = [];
  }

  /** The buffers created since {@link listCreated}, with their sizes; stops listing. */
  takeCreated(): { buffer: GPUBuffer; size: number }[] {
    const list = (this.#created ?? []).map((buffer) => ({ buffer, size: this.#sizes.get(buffer)! }));
    this.#created = null;
    return list;
  }

  /** Whether `buffer` is in the pool's free lists (no tensor holds it). */
  isFree(buffer: GPUBuffer): boolean {
    return this.#free.get(this.#sizes.get(buffer) ?? -1)?.includes(buffer) ?? false;
  }

  /** Called with each buffer {@link release} takes back (the engine drops what it derived from it). */
  onRelease: ((buffer: GPUBuffer) => void) | null = null;

  /** Returns a buffer obtained from {@link acquire} to the pool. */
  release(buffer: GPUBuffer): void {
    const size = this.#sizes.get(buffer);
    if (size === undefined) throw new Error("BufferPool.release: buffer does not belong to this pool");
    this.onRelease?.(buffer);
    this.#stats.liveBytes -= size;
    this.#stats.liveBuffers--;
    this.#stats.pooledBytes += size;
    let list = this.#free.get(size);
    if (!list) this.#free.set(size, list = []);
    list.push(buffer);
  }

  /** Destroys every pooled (free) buffer, returning its memory to the driver. */
  trim(): void {
    for (const list of this.#free.values()) for (const b of list) b.destroy();
    this.#free.clear();
    this.#stats.pooledBytes = 0;
  }

  /** Sets the peak counter to the current live bytes. */
  resetPeak(): void {
    this.#stats.peakBytes = this.#stats.liveBytes;
  }

  /** A snapshot of the counters. */
  stats(): MemoryStats {
    return { ...this.#stats };
  }
}
