"""A small CNN for scikit-learn's 8x8 digits as a WonderCraft learn program.

In a sandbox (`entrypoint: digits_cnn.py`) it trains the current version on /data's `x`
(N x 64 pixels scaled to 0-1) and `y` (labels) and writes the deltas and metrics. On the
author's machine, `python digits_cnn.py export DIR` writes the model's version 0
(DIR/parameters.safetensors) and its inference graph (DIR/model.onnx, logits for N x 64 inputs)."""

import json
import sys

import torch
import torch.nn.functional as F
from torch import nn


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 2 * 2, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x.reshape(-1, 1, 8, 8))), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


def train():
    import wondercraft_learn as wl

    job, base, data = wl.job(), wl.read_base(), wl.read_data()
    torch.manual_seed(job["seed"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = DigitsCNN()
    model.load_state_dict({name: torch.from_numpy(array) for name, array in base.items()})
    model.to(device)
    x = torch.from_numpy(data["x"]).float().to(device)
    y = torch.from_numpy(data["y"]).long().to(device)
    optimiser = torch.optim.SGD(model.parameters(), lr=job["learningRate"], momentum=0.9)
    for epoch in range(job["epochs"]):
        for batch in torch.randperm(len(x), device=device).split(job["batchSize"]):
            optimiser.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimiser.step()
        with torch.no_grad():
            logits = model(x)
        loss = F.cross_entropy(logits, y).item()
        accuracy = (logits.argmax(1) == y).float().mean().item()
        wl.report(epoch + 1, loss, accuracy)
    wl.write_trained({name: t.detach().cpu().numpy() for name, t in model.state_dict().items()})
    wl.write_metrics(len(x), loss=loss, accuracy=accuracy, cudaDevices=torch.cuda.device_count())


def export(directory, seed=0):
    """DIR/parameters.safetensors (version 0, in the state_dict's order) and DIR/model.onnx,
    whose initializers carry the same names, so any version's tensors can be put in."""
    from pathlib import Path

    import onnx
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = DigitsCNN().eval()
    state = {name: t.detach().contiguous() for name, t in model.state_dict().items()}
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "parameters.safetensors"), metadata={"tensor_order": json.dumps(list(state))})
    # The TorchScript exporter without constant folding keeps every parameter as an
    # initializer under its state_dict name (folding would bake transposed copies in).
    torch.onnx.export(
        model, (torch.zeros(1, 64),), str(out / "model.onnx"), dynamo=False,
        input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
        do_constant_folding=False, keep_initializers_as_inputs=False,
    )  # fmt: skip
    names = {init.name for init in onnx.load(str(out / "model.onnx")).graph.initializer}
    if not set(state) <= names:
        raise RuntimeError(f"the graph lacks initializers {sorted(set(state) - names)}")
    return out / "parameters.safetensors", out / "model.onnx"


if __name__ == "__main__":
    if sys.argv[1:2] == ["export"] and len(sys.argv) == 3:
        print(*export(sys.argv[2]))
    else:
        train()
