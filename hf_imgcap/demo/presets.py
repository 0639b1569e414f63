# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""The demo's settings: train.py's defaults are for users with pretrained encoders and real photos; these are for the
demo's random ResNet-152 and its 620 synthetic images, sized to finish in about ten minutes on 2 CPU cores.
`python train.py --demo` makes them the defaults; an option given on the command line still wins.
docs/demo.md says how they were chosen."""

DEMO_PRESET = {
    "dataset": None,  # written by the demo (DEMO_DATASET_SIZES)
    "encoder": "random",  # no pretrained weights offline
    "tokenizer": "captions",
    "caption_vocab_size": 300,
    "embedding_size": 256,
    "attention_size": 256,
    "hidden_size": 256,
    "dropout": 0.2,
    # A random encoder's content sits in weak feature directions; whitening lets gradient descent read them.
    "whiten_features": True,
    "output_dir": "outputs/demo",
    "num_train_epochs": 10,
    "metric_for_best_model": "cider",  # BLEU-4 over 60 images is too noisy to select on
    "learning_rate": 2e-3,
    "lr_decay_patience": 3,
    "early_stopping_patience": 5,
    "eval_num_beams": 3,
    "eval_max_new_tokens": 20,
    "scst_epochs": 4,
    "scst_learning_rate": 5e-4,
    "scst_baseline": "mean",
    "report_to": "none",
    "overwrite_output_dir": True,  # a re-run of the demo replaces the previous demo run (its data and cache stay)
}
DEMO_DATASET_SIZES = dict(num_train=500, num_val=60, num_test=60)
DEMO_REPORT_FILE = "demo_report.json"
