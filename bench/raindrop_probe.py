"""Raindrop learnability probes (development aid; needs Debian's python3-torch, python3-skimage, python3-scipy).

  python3 bench/raindrop_probe.py oracle EVAL_DIR
      Upper bound of a mask-guided fill: replaces the ground-truth drop mask (dilated 2 px) of each evaluation
      pair by a normalized Gaussian average of the surrounding clean pixels, and reports PSNR/SSIM on RGB
      against the input's.
  python3 bench/raindrop_probe.py train DATA_DIR {R|L} STEPS LR [--loss l1|mse|l1+mse] [--mse-weight W]
                                       [--focus N] [--pos-weight W]
      A PyTorch replica of the tiny preset's Net1 NetR (R, 112,371 parameters) or NetL (L, 28,297), trained on
      DATA_DIR/{train,val} (the synthesizer's input/target/mask layout) with 64x64 crops, batch 8, Adam; every
      100 steps prints validation PSNR/SSIM (R) or mask IoU/accuracy (L) on 128x128 centre crops. It checks
      that a training recipe can work independently of the WGSL engine; it is not the engine's reference.
"""
import argparse, glob, os
import numpy as np
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio as psnr, structural_similarity as ssim


def load(d):
    out = []
    for f in sorted(glob.glob(d + "/input/*.png")):
        b = os.path.basename(f)
        x = np.asarray(Image.open(f).convert("RGB"), np.float32) / 255
        y = np.asarray(Image.open(d + "/target/" + b).convert("RGB"), np.float32) / 255
        m = (np.asarray(Image.open(d + "/mask/" + b).convert("L"), np.float32) > 0).astype(np.float32)
        out.append((x, y, m))
    return out


def oracle(d):
    from scipy.ndimage import gaussian_filter, binary_dilation
    rows = []
    for (x, y, m), f in zip(load(d), sorted(glob.glob(d + "/input/*.png"))):
        row = {"input": (psnr(y, x, data_range=1), ssim(y, x, channel_axis=2, data_range=1))}
        md = binary_dilation(m > 0, iterations=2)
        for s in (2, 4, 8):
            w = gaussian_filter((~md).astype(float), s)
            fill = np.stack([gaussian_filter(x[..., c] * (~md), s) for c in range(3)], -1) / np.maximum(w, 1e-6)[..., None]
            o = np.clip(np.where((md & (w >= 1e-3))[..., None], fill, x), 0, 1)
            row[f"fill sigma {s}"] = (psnr(y, o, data_range=1), ssim(y, o, channel_axis=2, data_range=1))
        print(os.path.basename(f), f"mask {m.mean():.3f}", "  ".join(f"{k}: {p:.2f} dB {q:.4f}" for k, (p, q) in row.items()))
        rows.append(row)
    means = {k: (np.mean([r[k][0] for r in rows]), np.mean([r[k][1] for r in rows])) for k in rows[0]}
    print("mean over images", "  ".join(f"{k}: {p:.2f} dB {q:.4f}" for k, (p, q) in means.items()))


def train(a):
    import torch, torch.nn as nn, torch.nn.functional as F
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    tr = [(x.transpose(2, 0, 1), y.transpose(2, 0, 1), m[None]) for x, y, m in load(a.data + "/train")]
    va = [(x.transpose(2, 0, 1), y.transpose(2, 0, 1), m[None]) for x, y, m in load(a.data + "/val")]

    def crop(p, s=64):  # best of `focus` candidates: mask density closest to one half
        best = None
        for _ in range(a.focus):
            x, y, m = p
            i, j = rng.integers(0, x.shape[1] - s + 1), rng.integers(0, x.shape[2] - s + 1)
            mm = m[:, i:i + s, j:j + s]
            score = -abs(mm.mean() - 0.5)
            if best is None or score > best[0]:
                best = (score, x[:, i:i + s, j:j + s], y[:, i:i + s, j:j + s], mm)
        return best[1:]

    class Dense(nn.Module):
        def __init__(s, c, g):
            super().__init__()
            s.cs = nn.ModuleList([nn.Conv2d(c + i * g, g, 3, padding=1) for i in range(4)])
            s.f = nn.Conv2d(c + 4 * g, c, 1)

        def forward(s, x):
            f = [x]
            for cv in s.cs:
                f.append(F.relu(cv(torch.cat(f, 1))))
            return x + s.f(torch.cat(f, 1))

    class UNet(nn.Module):
        def __init__(s, c, g, out):
            super().__init__()
            s.h, s.e0 = nn.Conv2d(3, c, 3, padding=1), Dense(c, g)
            s.d0, s.e1 = nn.Conv2d(c, 2 * c, 3, 2, 1), Dense(2 * c, g)
            s.d1, s.e2 = nn.Conv2d(2 * c, 4 * c, 3, 2, 1), Dense(4 * c, g)
            s.u1, s.f1, s.b1 = nn.ConvTranspose2d(4 * c, 2 * c, 2, 2), nn.Conv2d(4 * c, 2 * c, 1), Dense(2 * c, g)
            s.u0, s.f0, s.b0 = nn.ConvTranspose2d(2 * c, c, 2, 2), nn.Conv2d(2 * c, c, 1), Dense(c, g)
            s.t = nn.Conv2d(c, out, 3, padding=1)

        def forward(s, x):
            e0 = s.e0(s.h(x))
            e1 = s.e1(s.d0(e0))
            b = s.e2(s.d1(e1))
            u1 = s.b1(s.f1(torch.cat([s.u1(b), e1], 1)))
            return s.t(s.b0(s.f0(torch.cat([s.u0(u1), e0], 1))))

    restore = a.net == "R"
    net = UNet(16, 8, 3) if restore else UNet(8, 4, 1)
    if restore:  # NetR starts as the identity, as in the engine
        nn.init.zeros_(net.t.weight)
        nn.init.zeros_(net.t.bias)
    print("parameters", sum(p.numel() for p in net.parameters()))
    opt = torch.optim.Adam(net.parameters(), a.lr)

    def validate():
        net.eval()
        se = sei = n = inter = union = correct = 0
        s_out = s_in = 0.0
        with torch.no_grad():
            for x, y, m in va:
                i, j = (x.shape[1] - 128) // 2, (x.shape[2] - 128) // 2
                xx, yy, mm = (torch.tensor(v[None, :, i:i + 128, j:j + 128]) for v in (x, y, m))
                o = net(xx)
                if restore:
                    r = (xx + o).clamp(0, 1)
                    se += ((r - yy) ** 2).sum().item()
                    sei += ((xx - yy) ** 2).sum().item()
                    n += r.numel()
                    s_out += ssim(r[0].numpy(), yy[0].numpy(), channel_axis=0, data_range=1) / len(va)
                    s_in += ssim(xx[0].numpy(), yy[0].numpy(), channel_axis=0, data_range=1) / len(va)
                else:
                    p, t = o > 0, mm > 0.5
                    inter += (p & t).sum().item()
                    union += (p | t).sum().item()
                    correct += (p == t).sum().item()
                    n += p.numel()
        net.train()
        if restore:
            return f"PSNR {10 * np.log10(n / se):.3f} (input {10 * np.log10(n / sei):.3f}) SSIM {s_out:.4f} (input {s_in:.4f})"
        return f"IoU {inter / max(union, 1):.3f} accuracy {correct / n:.3f}"

    for step in range(1, a.steps + 1):
        b = [crop(tr[k]) for k in rng.integers(0, len(tr), 8)]
        x, y, m = (torch.tensor(np.stack([v[i] for v in b])) for i in range(3))
        if rng.random() < 0.5:
            x, y, m = x.flip(3), y.flip(3), m.flip(3)
        o = net(x)
        if restore:
            loss = 0
            if "l1" in a.loss:
                loss = loss + (x + o - y).abs().mean()
            if "mse" in a.loss:
                loss = loss + a.mse_weight * ((x + o - y) ** 2).mean()
        else:
            loss = F.binary_cross_entropy_with_logits(o, m, pos_weight=torch.tensor(a.pos_weight))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == a.steps:
            print(step, f"loss {loss.item():.4f}", validate(), flush=True)


ap = argparse.ArgumentParser()
sub = ap.add_subparsers(dest="cmd", required=True)
o = sub.add_parser("oracle")
o.add_argument("data")
t = sub.add_parser("train")
t.add_argument("data")
t.add_argument("net", choices=["R", "L"])
t.add_argument("steps", type=int)
t.add_argument("lr", type=float)
t.add_argument("--loss", default="l1", choices=["l1", "mse", "l1+mse"])
t.add_argument("--mse-weight", type=float, default=1.0)
t.add_argument("--focus", type=int, default=4)
t.add_argument("--pos-weight", type=float, default=5.0)
args = ap.parse_args()
oracle(args.data) if args.cmd == "oracle" else train(args)
