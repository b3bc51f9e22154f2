"""BiSeNetV2's head in a float32 training step (batch 8 at the 192x256 crop: 128 -> 1024 channels at 24x32, ReLU, 1x1
classifier to 11), forward and backward, computed directly and as Winograd F(4x4, 3x3) with the classifier applied
before the blocks are put back (autograd through the transforms: the 3x3 weights themselves get their gradient).
Run: python results/winograd_zen2/train_head.py > results/winograd_zen2/train_head.txt
"""

import time

import torch
import torch.nn.functional as F

from bisenet_pl.deploy.winograd import INPUT_TRANSFORM, KERNEL_TRANSFORM, OUTPUT_TRANSFORM


def as_tensor(array) -> torch.Tensor:
    return torch.tensor(array, dtype=torch.float32)


KERNEL = as_tensor(KERNEL_TRANSFORM)
INPUT_BLOCKS = torch.einsum("ak,bl->abkl", as_tensor(INPUT_TRANSFORM), as_tensor(INPUT_TRANSFORM)).reshape(36, 1, 6, 6)
OUTPUT = as_tensor(OUTPUT_TRANSFORM)
OUTPUT_BLOCKS = torch.einsum("ia,jb->ijab", OUTPUT, OUTPUT).reshape(16, 36)


def winograd_head(x, weight, bias, classifier, classifier_bias):
    batch, channels, height, width = x.shape
    out = weight.shape[0]
    transformed = torch.einsum("ak,oikl,bl->aboi", KERNEL, weight, KERNEL).reshape(36, out, channels)
    padded = F.pad(x, (1, 4, 1, 4)).reshape(batch * channels, 1, height + 5, width + 5)
    blocks = F.conv2d(padded, INPUT_BLOCKS, stride=4)
    rows, cols = blocks.shape[-2:]
    blocks = blocks.reshape(batch, channels, 36, rows * cols).permute(2, 1, 0, 3).reshape(36, channels, -1)
    products = torch.bmm(transformed, blocks)
    z = torch.relu((OUTPUT_BLOCKS @ products.reshape(36, -1)).reshape(16, out, -1) + bias.view(1, out, 1))
    y = torch.matmul(classifier.view(1, -1, out), z) + classifier_bias.view(1, -1, 1)
    y = y.reshape(4, 4, -1, batch, rows, cols).permute(3, 2, 4, 0, 5, 1).reshape(batch, -1, 4 * rows, 4 * cols)
    return y[:, :, :height, :width]


def direct_head(x, weight, bias, classifier, classifier_bias):
    return F.conv2d(torch.relu(F.conv2d(x, weight, bias, padding=1)), classifier, classifier_bias)


def main() -> None:
    torch.manual_seed(0)
    params = [
        torch.randn(8, 128, 24, 32).requires_grad_(),
        (torch.randn(1024, 128, 3, 3) * 0.03).requires_grad_(),
        torch.zeros(1024).requires_grad_(),
        (torch.randn(11, 1024, 1, 1) * 0.03).requires_grad_(),
        torch.zeros(11).requires_grad_(),
    ]

    def step(head) -> list[torch.Tensor]:
        head(*params).square().mean().backward()
        grads = [p.grad for p in params]
        for p in params:
            p.grad = None
        return grads

    with torch.no_grad():
        expected = direct_head(*params)
        difference = (winograd_head(*params) - expected).abs().max()
        print(f"outputs: max difference {difference:.1e}, scale {expected.abs().max():.2f}")
    for name, a, b in zip(["input", "3x3 weight"], step(direct_head), step(winograd_head)):
        print(f"gradient of the {name}: max difference {(a - b).abs().max():.1e}, scale {a.abs().max():.1e}")
    times = {"direct": [], "winograd": []}
    for _ in range(4):
        for name, head in (("direct", direct_head), ("winograd", winograd_head)):
            step(head)
            start = time.perf_counter()
            for _ in range(3):
                step(head)
            times[name].append((time.perf_counter() - start) / 3 * 1000)
    for name, values in times.items():
        print(f"{name}: forward and backward {', '.join(f'{v:.0f}' for v in values)} ms")


if __name__ == "__main__":
    main()
