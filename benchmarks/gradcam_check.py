"""Where does a trained model look? Grad-CAM (Captum) on validation images of a training run.

Rebuilds the run's validation split from its ``config.json`` (same data, seed and fraction), computes Grad-CAM
on the last residual stage for the predicted class of a few images per class, writes a contact sheet of
overlays, and prints for each image the share of positive attribution that falls in the outer border band
(where text, markers and collimation edges live) and in a central box that roughly holds the lungs.
A model that looks at the lungs puts little mass on the border.

    python benchmarks/gradcam_check.py --run /path/to/train-out --per-class 3 --sheet gradcam.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam
from PIL import Image, ImageDraw

from model_training import data
from scoring import imaging
from scoring.model import load_checkpoint

BORDER = 0.12  # outer band, as a fraction of the side
LUNG_BOX = (0.15, 0.85, 0.2, 0.8)  # rows from-to, cols from-to, as fractions of the square input


def validation_items(run: Path) -> list[data.LabelledImage]:
    config = json.loads((run / "config.json").read_text())
    items = data.deduplicate(data.with_hashes(data.load_labelled(config["data"])))
    items, _ = data.readable(items)
    _, val = data.patient_split(items, config["val_fraction"], config["seed"])
    return val


def shares(cam: np.ndarray) -> tuple[float, float]:
    positive = np.clip(cam, 0, None)
    total = positive.sum() or 1.0
    size = cam.shape[0]
    band = int(round(BORDER * size))
    inner = positive[band:size - band, band:size - band].sum()
    r0, r1, c0, c1 = (int(round(f * size)) for f in LUNG_BOX)
    return float((total - inner) / total), float(positive[r0:r1, c0:c1].sum() / total)


def overlay(x: torch.Tensor, cam: np.ndarray, caption: str) -> Image.Image:
    grey = x[0].numpy()
    grey = (grey - grey.min()) / (np.ptp(grey) or 1.0)
    heat = np.clip(cam, 0, None)
    heat = heat / (heat.max() or 1.0)
    rgb = np.stack([grey * (1 - 0.5 * heat) + 0.5 * heat, grey * (1 - 0.5 * heat), grey * (1 - 0.5 * heat)], -1)
    image = Image.fromarray((rgb * 255).astype(np.uint8)).resize((256, 256))
    ImageDraw.Draw(image).text((4, 4), caption, fill=(255, 255, 0))
    return image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a cxr-train --out folder")
    parser.add_argument("--per-class", type=int, default=3)
    parser.add_argument("--sheet", type=Path, default=Path("gradcam.png"))
    args = parser.parse_args(argv)

    checkpoint = load_checkpoint(args.run / "model.pt")
    model = checkpoint.build()
    gradcam = LayerGradCam(model, model.layer4)
    chosen = []
    for label in checkpoint.classes:
        chosen += [item for item in validation_items(args.run) if item.label == label][: args.per_class]
    tiles, border_shares = [], []
    for item in chosen:
        x = checkpoint.preprocessing(imaging.read_xray(item.path).pixels)[None].requires_grad_()
        with torch.no_grad():
            probabilities = torch.softmax(model(x) / checkpoint.temperature, -1)[0]
        predicted = int(probabilities.argmax())
        cam = LayerAttribution.interpolate(gradcam.attribute(x, target=predicted), x.shape[-2:], "bilinear")
        cam = cam[0, 0].detach().numpy()
        border, lungs = shares(cam)
        border_shares.append(border)
        caption = (f"{item.label}->{checkpoint.classes[predicted]} {probabilities[predicted]:.2f} "
                   f"{item.source or ''} border {border:.0%}")
        print(f"{Path(item.path).name:<48} true {item.label:<9} predicted {checkpoint.classes[predicted]:<9} "
              f"p={probabilities[predicted]:.2f}  source {item.source or '?':<10} border {border:5.1%}  "
              f"central box {lungs:5.1%}")
        tiles.append(overlay(x[0].detach(), cam, caption))
    columns = args.per_class
    sheet = Image.new("RGB", (256 * columns, 256 * ((len(tiles) + columns - 1) // columns)))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, (256 * (i % columns), 256 * (i // columns)))
    sheet.save(args.sheet)
    area = 1 - (1 - 2 * BORDER) ** 2
    print(f"mean share of positive Grad-CAM in the outer {BORDER:.0%} band: {np.mean(border_shares):.1%} "
          f"(the band is {area:.0%} of the image); sheet: {args.sheet}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
