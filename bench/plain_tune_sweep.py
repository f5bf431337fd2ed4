"""The baseline of bench/end_to_end.py: the sweep of bench/jobs/e2e_grid.yml as a user writes it with Ray Tune
and torchvision, without visionsweep (no visionsweep import).

Same data (the JSONL's images, an 80/20 random split), model (torchvision resnet18, 10 classes), transforms
(random resized crop 32 + flip + colour jitter for training, resize + center crop 32 for validation), SGD
settings (momentum 0.9, Nesterov, weight decay 1e-4), batch sizes, 1 epoch, 4 learning rates, 2 trials at a
time with 1 CPU each. Each trial saves its model as a Tune checkpoint; the best one is printed at the end.

    .venv/bin/python bench/plain_tune_sweep.py OUTPUT_DIR
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

JSONL = Path(__file__).resolve().parents[1] / "trainers/sample_data/fashion_mnist/train/train_annotations.jsonl"
NORM = v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


class Images(Dataset):
    def __init__(self, items, classes, transform):
        self.items, self.classes, self.transform = items, classes, transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        return self.transform(decode_image(path, mode=ImageReadMode.RGB)), self.classes.index(label)


def split():
    rows = [json.loads(line) for line in JSONL.read_text().splitlines() if line.strip()]
    items = [(str((JSONL.parent / r["image_url"]).resolve()), r["label"]) for r in rows]
    random.Random(0).shuffle(items)
    n_valid = int(0.2 * len(items))
    return items[n_valid:], items[:n_valid], sorted({label for _, label in items})


def train(config):
    from ray import tune

    torch.set_num_threads(1)
    train_items, valid_items, classes = split()
    train_tf = v2.Compose([v2.RandomResizedCrop(32, antialias=True), v2.RandomHorizontalFlip(),
                           v2.ColorJitter(0.3, 0.3, 0.3, 0.05), v2.ToDtype(torch.float32, scale=True), NORM])
    valid_tf = v2.Compose([v2.Resize(32, antialias=True), v2.CenterCrop(32), v2.ToDtype(torch.float32, scale=True),
                           NORM])
    train_loader = DataLoader(Images(train_items, classes, train_tf), batch_size=32, shuffle=True, drop_last=True)
    valid_loader = DataLoader(Images(valid_items, classes, valid_tf), batch_size=80)
    model = torchvision.models.resnet18(num_classes=len(classes))
    opt = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=0.9, nesterov=True, weight_decay=1e-4)
    model.train()
    for x, y in train_loader:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in valid_loader:
            correct += (model(x).argmax(1) == y).sum().item()
    with tempfile.TemporaryDirectory() as d:
        torch.save(model.state_dict(), Path(d) / "model.pt")
        tune.report({"accuracy": correct / len(valid_items)}, checkpoint=tune.Checkpoint.from_directory(d))


def main() -> int:
    import ray
    from ray import tune

    out = Path(sys.argv[1]).resolve()
    ray.init(include_dashboard=False, log_to_driver=False)
    tuner = tune.Tuner(
        tune.with_resources(train, {"cpu": 1}),
        param_space={"lr": tune.grid_search([0.001, 0.005, 0.01, 0.05])},
        tune_config=tune.TuneConfig(metric="accuracy", mode="max", max_concurrent_trials=2),
        run_config=tune.RunConfig(name="plain", storage_path=str(out), verbose=0),
    )
    best = tuner.fit().get_best_result()
    print(f"best: lr {best.config['lr']} accuracy {best.metrics['accuracy']:.4f} checkpoint {best.checkpoint.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
