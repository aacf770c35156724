"""Does SAELens's own loader open the SAEs thinklens saves, and compute the same codes?

Two halves, run in two environments (`make check-saelens` does both):

    .venv/bin/python scripts/check_saelens.py write DIR          # thinklens: one SAE per architecture + expected codes
    .venv-saelens/bin/python scripts/check_saelens.py check DIR  # sae_lens only: load each, encode, decode, compare

The SAEs are random but shaped like trained ones (an input scale ≠ 1, a learnt threshold for
BatchTopK), so the check covers the folding of the scale and the architecture each is written as.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def write(directory: Path) -> None:
    from thinklens.sae.formats import save_sae
    from thinklens.sae.sae import ARCHS, Sae, SaeConfig

    torch.manual_seed(0)
    x = torch.randn(256, 64) * 30 + 5
    written = 0
    for arch, centred in ((arch, centred) for arch in ARCHS for centred in (True, False)):
        # Centred (what `train` writes now: apply_b_dec_to_input) and uncentred (older SAEs, the R1 release).
        sae = Sae(SaeConfig(arch=arch, d_in=64, d_sae=512, k=16, model="smollm2", layer=15, centred_encoder=centred))
        sae.init_from_data(x)
        with torch.no_grad():
            for parameter in sae.parameters():
                parameter.add_(0.02 * torch.randn_like(parameter))
            if arch.startswith("batchtopk"):
                sae.threshold.fill_(0.3)
        sae.eval()
        with torch.no_grad():
            codes = sae.encode(x)
            expected = {"x": x, "codes": codes.dense(), "recon": sae.decode(codes)}
        name = f"{arch}{'' if centred else '-uncentred'}"
        save_sae(sae, directory / name)
        torch.save(expected, directory / name / "expected.pt")
        written += 1
    print(f"wrote {written} SAEs to {directory}")


def check(directory: Path) -> None:
    from sae_lens import SAE, __version__

    failures = 0
    for folder in sorted(path for path in directory.iterdir() if (path / "cfg.json").is_file()):
        sae = SAE.load_from_disk(str(folder), device="cpu")
        expected = torch.load(folder / "expected.pt")
        with torch.no_grad():
            codes = sae.encode(expected["x"])
            recon = sae.decode(codes)
        code_error = (codes - expected["codes"]).abs().max().item()
        recon_error = ((recon - expected["recon"]).abs().max() / expected["recon"].abs().max()).item()
        same_active = torch.equal(codes > 0, expected["codes"] > 0)
        ok = same_active and code_error < 1e-4 and recon_error < 1e-5
        failures += not ok
        architecture = json.loads((folder / "cfg.json").read_text())["architecture"]
        print(f"{folder.name:<25} as SAELens {type(sae).__name__:<12} ({architecture}): same active features "
              f"{same_active}, max |Δcode| {code_error:.1e}, max |Δrecon|/max|recon| {recon_error:.1e}  "
              f"{'ok' if ok else 'FAILED'}")
    print(f"sae_lens {__version__}: {'all match' if not failures else f'{failures} failed'}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    command, folder = sys.argv[1], Path(sys.argv[2])
    folder.mkdir(parents=True, exist_ok=True)
    {"write": write, "check": check}[command](folder)
