"""Demo: convert a torchvision ResNet-18 with every method and print what it costs.

(The fine-tuning demo on the bundled dataset replaces this once `binarize.finetune` lands.)
"""
import torch
import torchvision

import binarize


def main():
    torch.manual_seed(0)
    model = torchvision.models.resnet18()  # architecture only: nothing is downloaded
    float_summary = binarize.summary(model, (1, 3, 224, 224))
    print(f"float ResNet-18: {float_summary.memory_bits / 1e6:.1f} Mbit, {float_summary.flops:.3e} FLOPs\n")
    for method in binarize.METHODS:
        bnn = binarize.convert(model, method)
        s = binarize.summary(bnn, (1, 3, 224, 224))
        print(f"== {method}: {len(bnn.binarize_plan.binary)} binary layers, "
              f"{s.memory_bits / 1e6:.1f} Mbit ({float_summary.memory_bits / s.memory_bits:.1f}x smaller), "
              f"{s.flops:.3e} FLOPs ({float_summary.flops / s.flops:.1f}x fewer)")
    print()
    print(binarize.summary(binarize.convert(model, "biper"), (1, 3, 224, 224)))
    print()
    print(binarize.analysis.quantization_report(binarize.convert(model, "biper")))


if __name__ == "__main__":
    main()
