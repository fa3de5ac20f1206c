"""The CIFAR-100 top-1 (%) of RepDistiller's README (the CRD paper, Tian et al., ICLR 2020, Tables 1 and 2)
for the methods RepDistiller implements, keyed by (teacher, student) in intrakd's model names: the
figure each of those methods' presets shows as published (``Distiller.published``). FSP has no
figure for wrn_40_2 -> wrn_40_1 and none across architectures ("N/A" in the table)."""

REPDISTILLER_CIFAR100_TOP1: dict[str, dict[tuple[str, str], float]] = {
    "fitnet": {
        ("wrn_40_2", "wrn_16_2"): 73.58, ("wrn_40_2", "wrn_40_1"): 72.24, ("resnet56", "resnet20"): 69.21,
        ("resnet110", "resnet20"): 68.99, ("resnet110", "resnet32"): 71.06, ("resnet32x4", "resnet8x4"): 73.50,
        ("vgg13", "vgg8"): 71.02, ("vgg13", "MobileNetV2"): 64.14, ("ResNet50", "MobileNetV2"): 63.16,
        ("ResNet50", "vgg8"): 70.69, ("resnet32x4", "ShuffleV1"): 73.59, ("resnet32x4", "ShuffleV2"): 73.54,
        ("wrn_40_2", "ShuffleV1"): 73.73,
    },
    "at": {
        ("wrn_40_2", "wrn_16_2"): 74.08, ("wrn_40_2", "wrn_40_1"): 72.77, ("resnet56", "resnet20"): 70.55,
        ("resnet110", "resnet20"): 70.22, ("resnet110", "resnet32"): 72.31, ("resnet32x4", "resnet8x4"): 73.44,
        ("vgg13", "vgg8"): 71.43, ("vgg13", "MobileNetV2"): 59.40, ("ResNet50", "MobileNetV2"): 58.58,
        ("ResNet50", "vgg8"): 71.84, ("resnet32x4", "ShuffleV1"): 71.73, ("resnet32x4", "ShuffleV2"): 72.73,
        ("wrn_40_2", "ShuffleV1"): 73.32,
    },
    "sp": {
        ("wrn_40_2", "wrn_16_2"): 73.83, ("wrn_40_2", "wrn_40_1"): 72.43, ("resnet56", "resnet20"): 69.67,
        ("resnet110", "resnet20"): 70.04, ("resnet110", "resnet32"): 72.69, ("resnet32x4", "resnet8x4"): 72.94,
        ("vgg13", "vgg8"): 72.68, ("vgg13", "MobileNetV2"): 66.30, ("ResNet50", "MobileNetV2"): 68.08,
        ("ResNet50", "vgg8"): 73.34, ("resnet32x4", "ShuffleV1"): 73.48, ("resnet32x4", "ShuffleV2"): 74.56,
        ("wrn_40_2", "ShuffleV1"): 74.52,
    },
    "cc": {
        ("wrn_40_2", "wrn_16_2"): 73.56, ("wrn_40_2", "wrn_40_1"): 72.21, ("resnet56", "resnet20"): 69.63,
        ("resnet110", "resnet20"): 69.48, ("resnet110", "resnet32"): 71.48, ("resnet32x4", "resnet8x4"): 72.97,
        ("vgg13", "vgg8"): 70.71, ("vgg13", "MobileNetV2"): 64.86, ("ResNet50", "MobileNetV2"): 65.43,
        ("ResNet50", "vgg8"): 70.25, ("resnet32x4", "ShuffleV1"): 71.14, ("resnet32x4", "ShuffleV2"): 71.29,
        ("wrn_40_2", "ShuffleV1"): 71.38,
    },
    "vid": {
        ("wrn_40_2", "wrn_16_2"): 74.11, ("wrn_40_2", "wrn_40_1"): 73.30, ("resnet56", "resnet20"): 70.38,
        ("resnet110", "resnet20"): 70.16, ("resnet110", "resnet32"): 72.61, ("resnet32x4", "resnet8x4"): 73.09,
        ("vgg13", "vgg8"): 71.23, ("vgg13", "MobileNetV2"): 65.56, ("ResNet50", "MobileNetV2"): 67.57,
        ("ResNet50", "vgg8"): 70.30, ("resnet32x4", "ShuffleV1"): 73.38, ("resnet32x4", "ShuffleV2"): 73.40,
        ("wrn_40_2", "ShuffleV1"): 73.61,
    },
    "rkd": {
        ("wrn_40_2", "wrn_16_2"): 73.35, ("wrn_40_2", "wrn_40_1"): 72.22, ("resnet56", "resnet20"): 69.61,
        ("resnet110", "resnet20"): 69.25, ("resnet110", "resnet32"): 71.82, ("resnet32x4", "resnet8x4"): 71.90,
        ("vgg13", "vgg8"): 71.48, ("vgg13", "MobileNetV2"): 64.52, ("ResNet50", "MobileNetV2"): 64.43,
        ("ResNet50", "vgg8"): 71.50, ("resnet32x4", "ShuffleV1"): 72.28, ("resnet32x4", "ShuffleV2"): 73.21,
        ("wrn_40_2", "ShuffleV1"): 72.21,
    },
    "pkt": {
        ("wrn_40_2", "wrn_16_2"): 74.54, ("wrn_40_2", "wrn_40_1"): 73.45, ("resnet56", "resnet20"): 70.34,
        ("resnet110", "resnet20"): 70.25, ("resnet110", "resnet32"): 72.61, ("resnet32x4", "resnet8x4"): 73.64,
        ("vgg13", "vgg8"): 72.88, ("vgg13", "MobileNetV2"): 67.13, ("ResNet50", "MobileNetV2"): 66.52,
        ("ResNet50", "vgg8"): 73.01, ("resnet32x4", "ShuffleV1"): 74.10, ("resnet32x4", "ShuffleV2"): 74.69,
        ("wrn_40_2", "ShuffleV1"): 73.89,
    },
    "ab": {
        ("wrn_40_2", "wrn_16_2"): 72.50, ("wrn_40_2", "wrn_40_1"): 72.38, ("resnet56", "resnet20"): 69.47,
        ("resnet110", "resnet20"): 69.53, ("resnet110", "resnet32"): 70.98, ("resnet32x4", "resnet8x4"): 73.17,
        ("vgg13", "vgg8"): 70.94, ("vgg13", "MobileNetV2"): 66.06, ("ResNet50", "MobileNetV2"): 67.20,
        ("ResNet50", "vgg8"): 70.65, ("resnet32x4", "ShuffleV1"): 73.55, ("resnet32x4", "ShuffleV2"): 74.31,
        ("wrn_40_2", "ShuffleV1"): 73.34,
    },
    "ft": {
        ("wrn_40_2", "wrn_16_2"): 73.25, ("wrn_40_2", "wrn_40_1"): 71.59, ("resnet56", "resnet20"): 69.84,
        ("resnet110", "resnet20"): 70.22, ("resnet110", "resnet32"): 72.37, ("resnet32x4", "resnet8x4"): 72.86,
        ("vgg13", "vgg8"): 70.58, ("vgg13", "MobileNetV2"): 61.78, ("ResNet50", "MobileNetV2"): 60.99,
        ("ResNet50", "vgg8"): 70.29, ("resnet32x4", "ShuffleV1"): 71.75, ("resnet32x4", "ShuffleV2"): 72.50,
        ("wrn_40_2", "ShuffleV1"): 72.03,
    },
    "fsp": {
        ("wrn_40_2", "wrn_16_2"): 72.91, ("resnet56", "resnet20"): 69.95, ("resnet110", "resnet20"): 70.11,
        ("resnet110", "resnet32"): 71.89, ("resnet32x4", "resnet8x4"): 72.62, ("vgg13", "vgg8"): 70.23,
    },
    "nst": {
        ("wrn_40_2", "wrn_16_2"): 73.68, ("wrn_40_2", "wrn_40_1"): 72.24, ("resnet56", "resnet20"): 69.60,
        ("resnet110", "resnet20"): 69.53, ("resnet110", "resnet32"): 71.96, ("resnet32x4", "resnet8x4"): 73.30,
        ("vgg13", "vgg8"): 71.53, ("vgg13", "MobileNetV2"): 58.16, ("ResNet50", "MobileNetV2"): 64.96,
        ("ResNet50", "vgg8"): 71.28, ("resnet32x4", "ShuffleV1"): 74.12, ("resnet32x4", "ShuffleV2"): 74.68,
        ("wrn_40_2", "ShuffleV1"): 74.89,
    },
    "crd": {
        ("wrn_40_2", "wrn_16_2"): 75.48, ("wrn_40_2", "wrn_40_1"): 74.14, ("resnet56", "resnet20"): 71.16,
        ("resnet110", "resnet20"): 71.46, ("resnet110", "resnet32"): 73.48, ("resnet32x4", "resnet8x4"): 75.51,
        ("vgg13", "vgg8"): 73.94, ("vgg13", "MobileNetV2"): 69.73, ("ResNet50", "MobileNetV2"): 69.11,
        ("ResNet50", "vgg8"): 74.30, ("resnet32x4", "ShuffleV1"): 75.11, ("resnet32x4", "ShuffleV2"): 75.65,
        ("wrn_40_2", "ShuffleV1"): 76.05,
    },
}
