/**
 * Builds the browser demo into a self-contained static site: `index.html`, the esbuild bundle `app.js`
 * (the library and the page logic), the bundled samples (`samples/*.png` and their `SOURCES.md`) and a
 * copy of the bundled `weights/*.safetensors`.
 *
 * ```sh
 * deno run -A web/build.ts                 # → web/dist/
 * deno run -A web/build.ts --serve 8000    # build, then serve web/dist on http://127.0.0.1:8000/
 * ```
 *
 * @module
 */

import * as esbuild from "esbuild";

const webDir = new URL(".", import.meta.url);
const rootDir = new URL("../", import.meta.url);

/** Options of {@link buildWeb}. */
export interface BuildOptions {
  /** Output folder (a path). Default `web/dist/`. */
  outdir?: string;
  /** Minify the bundle. Default true. */
  minify?: boolean;
  /** Copy `weights/*.safetensors` of the repository into the site. Default true. */
  copyWeights?: boolean;
}

/** What {@link buildWeb} wrote. */
export interface BuildResult {
  /** The site folder. */
  outdir: string;
  /** Bytes of `app.js`. */
  bundleBytes: number;
  /** Weights files copied into `weights/`. */
  weights: string[];
  /** Sample images copied into `samples/`. */
  samples: string[];
}

/** Bundles `web/app.ts` with esbuild and writes the site (index.html, app.js, samples/, weights/) to
 * `outdir`. */
export async function buildWeb(options: BuildOptions = {}): Promise<BuildResult> {
  const outdir = options.outdir ?? new URL("dist", webDir).pathname;
  await Deno.mkdir(`${outdir}/weights`, { recursive: true });
  await Deno.mkdir(`${outdir}/samples`, { recursive: true });
  try {
    await esbuild.build({
      entryPoints: [new URL("app.ts", webDir).pathname],
      outfile: `${outdir}/app.js`,
      bundle: true,
      format: "esm",
      platform: "browser",
      target: "es2022",
      minify: options.minify ?? true,
      sourcemap: "linked",
      logLevel: "warning",
    });
  } finally {
    // esbuild keeps a child process alive otherwise, which holds Deno (and test sanitizers) open.
    await esbuild.stop();
  }
  await Deno.copyFile(new URL("index.html", webDir), `${outdir}/index.html`);
  // The page offers these as one-click samples; their licences travel with them.
  const samples: string[] = [];
  for await (const entry of Deno.readDir(new URL("samples/", rootDir))) {
    if (!entry.isFile || !(entry.name.endsWith(".png") || entry.name === "SOURCES.md")) continue;
    await Deno.copyFile(new URL(`samples/${entry.name}`, rootDir), `${outdir}/samples/${entry.name}`);
    if (entry.name.endsWith(".png")) samples.push(entry.name);
  }
  const weights: string[] = [];
  if (options.copyWeights ?? true) {
    try {
      for await (const entry of Deno.readDir(new URL("weights/", rootDir))) {
        if (!entry.isFile || !entry.name.endsWith(".safetensors")) continue;
        await Deno.copyFile(new URL(`weights/${entry.name}`, rootDir), `${outdir}/weights/${entry.name}`);
        weights.push(entry.name);
      }
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }
  const bundleBytes = (await Deno.stat(`${outdir}/app.js`)).size;
  return { outdir, bundleBytes, weights: weights.sort(), samples: samples.sort() };
}

const CONTENT_TYPES: Record<string, string> = {
  html: "text/html; charset=utf-8",
  js: "text/javascript; charset=utf-8",
  map: "application/json",
  safetensors: "application/octet-stream",
  png: "image/png",
  jpg: "image/jpeg",
  md: "text/markdown; charset=utf-8",
};

/** A request handler serving the files under `dir` (GET only; `/` is `index.html`). `extra` maps URL
 * paths to in-memory bodies that take precedence (tests serve generated weights this way). */
export function staticHandler(
  dir: string,
  extra: Record<string, Uint8Array> = {},
): (request: Request) => Promise<Response> {
  return async (request) => {
    let path = decodeURIComponent(new URL(request.url).pathname);
    if (path.endsWith("/")) path += "index.html";
    const type = CONTENT_TYPES[path.slice(path.lastIndexOf(".") + 1)] ?? "application/octet-stream";
    if (path in extra) {
      return new Response(extra[path] as Uint8Array<ArrayBuffer>, { headers: { "content-type": type } });
    }
    // Refuse any path that could leave `dir`.
    if (request.method !== "GET" || path.split("/").includes("..")) {
      return new Response("not found", { status: 404 });
    }
    try {
      const body = await Deno.readFile(`${dir}${path}`);
      return new Response(body, { headers: { "content-type": type, "cache-control": "no-cache" } });
    } catch {
      return new Response("not found", { status: 404 });
    }
  };
}

if (import.meta.main) {
  const result = await buildWeb();
  console.log(
    `built ${result.outdir}: app.js ${(result.bundleBytes / 1024).toFixed(0)} KiB, samples: ${
      result.samples.join(", ")
    }, weights: ${
      result.weights.join(", ") || "none (train them into weights/, or open the page with ?weights=URL)"
    }`,
  );
  const serveAt = Deno.args.indexOf("--serve");
  if (serveAt >= 0) {
    const port = Number(Deno.args[serveAt + 1] ?? 8000);
    Deno.serve({ hostname: "127.0.0.1", port }, staticHandler(result.outdir));
  }
}
