"""The PyTorch peer of the Factor Transfer step: the original code's
training step, timed the way `throughput.py` times ours.

The networks and the step are those of the paper's code,
Jangho-Kim/Factor-Transfer-pytorch at 19cce265ebe51c751481041e223a13be2e684322:

- `Models/resnet.py`: `BasicBlock`, `ResNet_simple`, `ResNet20`, `ResNet56`
  (CIFAR ResNets with projection shortcuts; the forward returns the three
  stage outputs and the logits);
- `Models/FeatureProjection.py`: `Paraphraser` (mode 1 is the encoder) and
  `Translator`, 3x3 convolutions with bias and LeakyReLU(0.1);
- `train_student.py` `train()`: teacher and paraphraser in eval mode,
  `loss = BETA * L1(FT(factor_s), FT(factor_t.detach())) + CE`, two SGD
  optimizers (student, translator; lr 0.1, momentum 0.9, weight decay
  5e-4), `utils.FT` = `F.normalize(x.view(x.size(0), -1))`.

One change in the peer's favour: the teacher and the paraphraser run under
`torch.no_grad()` (the original builds their graph and only detaches the
factor), which is what ft_keras does too. bfloat16 is
`torch.autocast("cpu", dtype=torch.bfloat16)` around the forward passes and
the loss, PyTorch's documented CPU mixed precision.

    python benchmarks/torch_peer.py --precision bfloat16 --steps 10

prints one JSON line: images per second, the median of `--repeats` blocks of
`--steps` steps after `--warmup` steps, on the same random CIFAR-shaped
batch every step (as `throughput.py` feeds ours).
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class ResNetSimple(nn.Module):
    """`ResNet_simple`: returns [stage1, stage2, stage3, logits]."""

    def __init__(self, num_blocks, num_classes=10):
        super().__init__()
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, num_blocks[0], 1)
        self.layer2 = self._make_layer(32, num_blocks[1], 2)
        self.layer3 = self._make_layer(64, num_blocks[2], 2)
        self.linear = nn.Linear(64, num_classes)

    def _make_layer(self, planes, num_blocks, stride):
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out1 = self.layer1(out)
        out2 = self.layer2(out1)
        out3 = self.layer3(out2)
        out = F.avg_pool2d(out3, 8).view(out3.size(0), -1)
        return [out1, out2, out3, self.linear(out)]


DEPTHS = {"resnet20": [3, 3, 3], "resnet56": [9, 9, 9], "resnet110": [18, 18, 18]}


def _convs(in_planes, planes):
    return nn.ModuleList([
        nn.Conv2d(in_planes, in_planes, 3, 1, 1, bias=True),
        nn.Conv2d(in_planes, planes, 3, 1, 1, bias=True),
        nn.Conv2d(planes, planes, 3, 1, 1, bias=True),
    ])


class Encoder(nn.Module):
    """`Paraphraser` in mode 1 and `Translator`: three 3x3 convolutions, each
    followed by LeakyReLU(0.1). (The paraphraser's decoder does not run in
    the distillation step.)"""

    def __init__(self, in_planes, planes):
        super().__init__()
        self.convs = _convs(in_planes, planes)

    def forward(self, x):
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.1)
        return x


def factor(x):
    """`utils.FT`."""
    return F.normalize(x.view(x.size(0), -1))


def build(teacher="resnet56", student="resnet20", rate=0.5, lr=0.1,
          weight_decay=5e-4, beta=500.0, return_parts=False):
    """The original step as a closure `step(inputs, targets, autocast) ->
    loss` (and, with `return_parts`, a dict of its four networks)."""
    teacher_net = ResNetSimple(DEPTHS[teacher]).eval()
    student_net = ResNetSimple(DEPTHS[student]).train()
    planes = int(round(64 * rate))
    paraphraser = Encoder(64, planes).eval()
    translator = Encoder(64, planes).train()
    for p in list(teacher_net.parameters()) + list(paraphraser.parameters()):
        p.requires_grad_(False)
    optimizer = torch.optim.SGD(student_net.parameters(), lr=lr, momentum=0.9,
                                weight_decay=weight_decay)
    optimizer_module = torch.optim.SGD(translator.parameters(), lr=lr,
                                       momentum=0.9, weight_decay=weight_decay)

    def step(inputs, targets, autocast):
        optimizer.zero_grad()
        optimizer_module.zero_grad()
        with autocast():
            with torch.no_grad():
                factor_t = paraphraser(teacher_net(inputs)[2])
            outputs = student_net(inputs)
            factor_s = translator(outputs[2])
            loss = beta * F.l1_loss(factor(factor_s), factor(factor_t)) + (
                F.cross_entropy(outputs[3], targets))
        loss.backward()
        optimizer.step()
        optimizer_module.step()
        return loss

    if return_parts:
        return step, {"teacher": teacher_net, "student": student_net,
                      "paraphraser": paraphraser, "translator": translator}
    return step


def measure(precision="float32", batch=128, steps=10, repeats=3, warmup=3,
            teacher="resnet56", student="resnet20", threads=None):
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    inputs = torch.randn(batch, 3, 32, 32)
    targets = torch.randint(0, 10, (batch,))
    step = build(teacher, student)
    if precision == "bfloat16":
        autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    elif precision == "float32":
        autocast = lambda: torch.autocast("cpu", enabled=False)  # noqa: E731
    else:
        raise ValueError(
            f"precision must be 'float32' or 'bfloat16'. Received: {precision!r}")
    for _ in range(warmup):
        step(inputs, targets, autocast).item()
    blocks = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            loss = step(inputs, targets, autocast)
        loss.item()  # the step's work is done when its loss is read
        blocks.append((time.perf_counter() - start) / steps)
    seconds = statistics.median(blocks)
    return {
        "precision": precision,
        "seconds_per_step": seconds,
        "images_per_second": batch / seconds,
        "all_seconds_per_step": blocks,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--precision", default="float32",
                        choices=["float32", "bfloat16"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--teacher", default="resnet56", choices=sorted(DEPTHS))
    parser.add_argument("--student", default="resnet20", choices=sorted(DEPTHS))
    args = parser.parse_args()
    print(json.dumps(measure(args.precision, args.batch, args.steps,
                             args.repeats, teacher=args.teacher,
                             student=args.student)))


if __name__ == "__main__":
    main()
