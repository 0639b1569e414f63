# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""A Gradio Space for a captioner: `folder` writes it (no gradio needed), `captioning` computes what the page shows
(no gradio), `page` is the Gradio page itself (the only module here that imports gradio: `pip install "hf-imgcap[space]"`)."""
