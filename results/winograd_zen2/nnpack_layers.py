"""NNPACK's Winograd convolutions (inside PyTorch's CPU build) against oneDNN's direct ones, per eligible 3x3
layer of BiSeNetV2: forward at inference (batch 1, 512x1024) and forward plus input gradient at the training
crop (batch 8, 192x256). Run: python results/winograd_zen2/nnpack_layers.py > results/winograd_zen2/nnpack_layers.txt
"""

import time

import torch
import torch.nn.functional as F
from torch import nn

from bisenet_pl.deploy.network import inference_network
from bisenet_pl.models.bisenetv2 import BiSeNetV2


def milliseconds(function, repeats: int = 5) -> float:
    function()
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - start) / repeats * 1000


def eligible(conv: nn.Conv2d) -> bool:
    return conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.groups == 1 and conv.padding == (1, 1)


def conv_inputs(net: nn.Module, images: torch.Tensor) -> list[tuple[str, nn.Conv2d, torch.Size]]:
    seen = []
    hooks = [
        module.register_forward_hook(lambda module, args, output, name=name: seen.append((name, module, args[0].shape)))
        for name, module in net.named_modules()
        if isinstance(module, nn.Conv2d) and eligible(module)
    ]
    with torch.no_grad():
        net(images)
    for hook in hooks:
        hook.remove()
    return seen


def main() -> None:
    assert torch._nnpack_available()  # also initialises NNPACK: without it every call fails
    torch.manual_seed(0)
    network = BiSeNetV2(num_classes=11)
    cases = {
        "inference, batch 1 at 512x1024 (folded)": (inference_network(network), torch.randn(1, 3, 512, 1024), False),
        "training, batch 8 at 192x256": (network.train(), torch.randn(8, 3, 192, 256), True),
    }
    for title, (net, images, backward) in cases.items():
        print(f"# {title}: ms, oneDNN direct / NNPACK")
        totals = [0.0, 0.0]
        for name, conv, shape in conv_inputs(net, images):
            x, weight = torch.randn(shape), conv.weight.detach()
            bias = torch.zeros(conv.out_channels)
            direct = milliseconds(lambda: F.conv2d(x, weight, None, 1, 1))
            nnpack = milliseconds(lambda: torch._nnpack_spatial_convolution(x, weight, bias, [1, 1]))
            line = f"{name} {tuple(shape)} -> {conv.out_channels}: forward {direct:.1f} / {nnpack:.1f}"
            totals[0] += direct
            totals[1] += nnpack
            if backward:  # the input gradient is the same convolution with the kernel flipped and transposed
                grad = torch.randn(shape[0], conv.out_channels, *shape[2:])
                flipped = weight.flip(2, 3).transpose(0, 1).contiguous()
                mask = [True, False, False]
                direct = milliseconds(
                    lambda: torch.ops.aten.convolution_backward(
                        grad, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask
                    )
                )
                nnpack = milliseconds(
                    lambda: torch._nnpack_spatial_convolution(grad, flipped, torch.zeros(shape[1]), [1, 1])
                )
                line += f", input gradient {direct:.1f} / {nnpack:.1f}"
                totals[0] += direct
                totals[1] += nnpack
            print(line)
        print(f"total {totals[0]:.0f} / {totals[1]:.0f}")


if __name__ == "__main__":
    main()
