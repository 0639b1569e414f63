# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""The Space's Gradio page: upload or pick an image, read the caption, look at where the model looked for each word,
compare the top beams. The only module of hf-imgcap that imports gradio (`pip install "hf-imgcap[space]"`).

Served offline: no analytics, no share link, the fonts and scripts come from the gradio package itself.
"""

import functools
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # read by gradio at import time

import gradio as gr  # noqa: E402

from hf_imgcap.space.captioning import MAX_BEAMS, MAX_NEW_TOKENS, SpaceCaptioner  # noqa: E402

LOCAL_HOST = "127.0.0.1"
MAX_UPLOAD = "20mb"  # gradio refuses larger uploads before they are stored; the pixel limit is checked from the header
QUEUE_SIZE = 16  # requests waiting beyond this are turned away with "the queue is full" instead of piling up
CONCURRENT_CAPTIONS = 1  # torch already uses every core for one caption
BEAM_HEADERS = ["rank", "caption", "score"]


class ImageFile(gr.Image):
    """`gr.Image` that hands the app the uploaded file's path without opening it: the processor's own checks (pixel
    and aspect limits from the header, the reason a file is not an image) are the first to look at the file."""

    is_template = True  # the page shows it with gr.Image's own front end

    def preprocess(self, payload):
        if payload is None or payload.path is None or (payload.url or "").startswith("data:"):
            return super().preprocess(payload)
        return str(payload.path)


def caption_for_page(captioner: SpaceCaptioner, image, num_beams, max_new_tokens, num_return_sequences):
    """What the page shows for one image: (caption, the attention figure, the word gallery, the beams table).
    A problem with the image or a setting is shown on the page as a message (gr.Error), never as a traceback."""
    if image is None:
        raise gr.Error("Upload an image, or pick one of the examples.", print_exception=False)
    try:
        result = captioner.caption(image, num_beams, max_new_tokens, num_return_sequences, name=_display_name(image))
    except ValueError as error:  # the image or a setting: the message names the problem
        raise gr.Error(str(error), print_exception=False) from None
    gallery = [(panel, token) for panel, token in zip(result.word_panels, result.tokens)]
    beams = [[rank, beam.caption, round(beam.score, 4)] for rank, beam in enumerate(result.beams, start=1)]
    return result.caption, result.figure, gallery, beams


def _display_name(image) -> str:
    # The uploaded file's own name, without gradio's cache folder in front of it.
    return os.path.basename(image) if isinstance(image, str) else "the image"


def build_page(captioner: SpaceCaptioner, title: str, examples: list[str] = (), description: str = "") -> gr.Blocks:
    with gr.Blocks(title=title, analytics_enabled=False) as page:
        gr.Markdown(f"# {title}\n{description}")
        with gr.Row():
            with gr.Column(scale=1):
                image = ImageFile(type="filepath", sources=["upload", "clipboard"], label="Image", elem_id="image")
                num_beams = gr.Slider(1, MAX_BEAMS, value=3, step=1, label="Beam size", elem_id="num-beams")
                max_new_tokens = gr.Slider(1, MAX_NEW_TOKENS, value=30, step=1, label="Max new tokens", elem_id="max-new-tokens")
                shown = gr.Slider(1, MAX_BEAMS, value=3, step=1, label="Beams shown (at most the beam size)", elem_id="beams-shown")
                run = gr.Button("Caption", variant="primary", elem_id="caption-button")
                examples_slot = gr.Column()
            with gr.Column(scale=2):
                caption = gr.Textbox(label="Caption", interactive=False, elem_id="caption")
                gallery = gr.Gallery(label="Attention for each word (one colour scale for the whole caption)", columns=6,
                                     height="auto", elem_id="word-attention")
                beams = gr.Dataframe(headers=BEAM_HEADERS, label="Top beams (score: log-probability / length^length_penalty)",
                                     interactive=False, elem_id="beams")
                figure = gr.Image(label="The attention figure", type="pil", interactive=False, format="png", elem_id="figure")
        inputs = [image, num_beams, max_new_tokens, shown]
        outputs = [caption, figure, gallery, beams]
        run_caption = functools.partial(caption_for_page, captioner)
        run.click(run_caption, inputs, outputs, api_name="caption")
        image.upload(run_caption, inputs, outputs, api_name=False)  # an upload captions at once
        if examples:
            with examples_slot:  # under the controls; clicking one captions it with the current settings
                picked = gr.Examples(examples=[[path] for path in examples], inputs=[image], label="Examples from the test set")
            picked.load_input_event.then(run_caption, inputs, outputs, api_name=False)
    return page.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CONCURRENT_CAPTIONS)


def serve(page: gr.Blocks, port: int | None = None, **launch_kwargs):
    """Serve on 127.0.0.1 (or GRADIO_SERVER_NAME, which a hosted Space sets), never through a share link."""
    return page.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", LOCAL_HOST), server_port=port, share=False,
        max_file_size=MAX_UPLOAD, **launch_kwargs,
    )
