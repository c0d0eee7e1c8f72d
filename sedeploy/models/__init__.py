"""The model zoo: registry of named constructors, SE-ResNet/ResNeXt, pre-activation, MobileNet, complexity, checkpoints."""
