"""Models, one module per family, and where their initial weights come from.

* ``names``: which backend a ``model_name`` belongs to (built-in, Hugging Face, MMDetection) and its spellings;
* ``families``: the model families registered by name: the names each owns, its default hyperparameters and the
  path of its builder (light: the job validator reads it through ``trainers.hyperparameters``);
* ``factory``: ``create_model``, the one place that picks a family's builder, for training and for package loading;
* ``classifiers``: the built-in classification zoo of §5.1 (torchvision, timm);
* ``huggingface``: any ``transformers`` image classifier (§5.3);
* ``detectors``: torchvision's Faster R-CNN / RetinaNet / Mask R-CNN on ResNet FPN backbones (§5.1);
* ``openmmlab``: MMDetection 3.x zoo models and YOLOv5 (mmyolo) behind the torchvision detector interface;
* ``loading``: loading weights into a model and ``layers_to_freeze`` groups, shared by the families;
* ``weights/``: the pretrained-weights manifest, its sources (store, caches, origin) and hash checks.

Import the module you need (``from trainers.models.factory import create_model``): this package imports
nothing itself, so the light modules (``names``) stay light.
"""
