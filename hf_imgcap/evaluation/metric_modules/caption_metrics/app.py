# The Hub Space of this metric (the metric card's `app_file`): a form that runs `compute` on what you type.
from pathlib import Path

import evaluate
from evaluate.utils import launch_gradio_widget

module = evaluate.load(str(Path(__file__).resolve().parent))
launch_gradio_widget(module)
