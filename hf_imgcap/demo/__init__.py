# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""The offline demo and what only it needs: synthetic scenes in a Flickr8k layout (`scenes`), content accuracy
(`content_accuracy`), a linear probe of the features (`feature_probe`), where the attention falls
(`attention_grounding`), the demo's presets and report. Training and the model never import this package: the demo
calls `train()` like any user, then scores the folders it wrote."""
