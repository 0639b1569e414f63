"""The Space for real: `python app.py` in its own process on 127.0.0.1, driven by headless Chromium (selenium) and by
gradio_client. Slow (a server start and a browser): RUN_SLOW=1, as CI does."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hf_imgcap import ShowAttendTellProcessor
from hf_imgcap.models.show_attend_tell.processing_show_attend_tell import default_image_processor
from hf_imgcap.space.folder import write_space

from conftest import REPO_ROOT, tiny_model

pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
INSTALL_CHROMIUM = "apt-get install -y --no-install-recommends chromium chromium-driver"
SCREENSHOT = REPO_ROOT / "docs" / "space_screenshot.png"
SERVER_START_SECONDS = 180
CAPTION_SECONDS = 120


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def sample_photo(path: Path) -> Path:
    """A picture with something to look at: a green square on a dark-to-red gradient."""
    pixels = np.zeros((240, 320, 3), np.uint8)
    pixels[..., 0] = np.linspace(0, 255, 320, dtype=np.uint8)[None]
    pixels[60:180, 100:220] = (30, 200, 60)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    """A tiny model with 7×7 regions (224-pixel input) saved in tmp, its Space, the app serving it on a free port."""
    root = tmp_path_factory.mktemp("space_browser")
    model = tiny_model(seed=0, image_size=224)
    with torch_no_grad():  # a random model attends almost evenly; sharper scores make the figure show differences
        model.attention.score.weight.mul_(8.0)
    processor = ShowAttendTellProcessor(image_processor=default_image_processor(224))
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    photo = sample_photo(root / "photo.png")
    folder = write_space(str(root / "model"), root / "space", examples=[str(photo)], title="Tiny random captioner")
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("GRADIO_SERVER_NAME", None)
    log = open(root / "app.log", "w")
    server = subprocess.Popen([sys.executable, str(folder / "app.py"), "--port", str(port)], cwd=folder, env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_served(url, server, root / "app.log")
        yield {"url": url, "model": model, "processor": processor, "photo": photo, "root": root}
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the app and nothing else: its own process group
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def torch_no_grad():
    import torch

    return torch.no_grad()


def wait_until_served(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the app exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"the app did not answer on {url} within {SERVER_START_SECONDS} s:\n{log.read_text()[-3000:]}")


def python_api_caption(space, **generate_kwargs) -> str:
    model, processor = space["model"], space["processor"]
    return processor.batch_decode(model.generate(**processor(images=[str(space["photo"])]), **generate_kwargs))[0]


@pytest.fixture
def browser():
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip(f"no Chromium at {CHROMIUM} / {CHROMEDRIVER}: {INSTALL_CHROMIUM}")
    webdriver = pytest.importorskip("selenium.webdriver", reason='selenium is in the test extra: pip install -e ".[test]"')
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1700"):
        options.add_argument(argument)  # --no-sandbox: CI runs as root
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every request the page makes
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def requested_urls(driver) -> set[str]:
    urls = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.add(message["params"]["request"]["url"])
    return urls


def test_the_page_in_a_browser_captions_an_upload_as_the_python_api_does(space, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, CAPTION_SECONDS)
    browser.get(space["url"])
    upload = wait.until(lambda driver: driver.find_element(By.CSS_SELECTOR, "#image input[type=file]"))
    upload.send_keys(str(space["photo"]))  # an upload captions at once, with the page's defaults
    caption = wait.until(lambda driver: driver.find_element(By.CSS_SELECTOR, "#caption textarea").get_attribute("value"))
    wait.until(lambda driver: driver.find_elements(By.CSS_SELECTOR, "#figure img"))
    assert caption == python_api_caption(space, num_beams=3, max_new_tokens=30)

    word_panels = wait.until(lambda driver: driver.find_elements(By.CSS_SELECTOR, "#word-attention img"))
    assert len(word_panels) >= 1
    beams = browser.find_element(By.CSS_SELECTOR, "#beams").text
    assert "rank" in beams and "score" in beams
    time.sleep(1)  # let the images finish painting
    shot = tmp_path / "space.png"
    assert browser.save_screenshot(str(shot))
    if os.environ.get("HF_IMGCAP_UPDATE_SCREENSHOT") == "1":  # refresh the README's picture of the page on purpose only
        shutil.copyfile(shot, SCREENSHOT)

    # Offline: the page (scripts, styles, fonts) comes from the app itself, never from a CDN or an analytics host.
    outside = sorted(url for url in requested_urls(browser) if not url.startswith((space["url"], "data:", "blob:")))
    assert outside == []


def test_a_file_that_is_not_an_image_gets_a_message_on_the_page(space, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("these are notes, not a picture")
    browser.get(space["url"])
    wait = WebDriverWait(browser, CAPTION_SECONDS)
    wait.until(lambda driver: driver.find_element(By.CSS_SELECTOR, "#image input[type=file]")).send_keys(str(not_an_image))
    message = wait.until(lambda driver: "not an image" in driver.find_element(By.TAG_NAME, "body").text
                         and driver.find_element(By.TAG_NAME, "body").text)
    assert "notes.png: not an image Pillow can read" in message
    assert "Traceback" not in message


def test_gradio_client_gets_the_same_caption(space):
    from gradio_client import Client, handle_file

    client = Client(space["url"], verbose=False, analytics_enabled=False)
    caption, figure, gallery, beams = client.predict(handle_file(str(space["photo"])), 3, 30, 3, api_name="/caption")
    assert caption == python_api_caption(space, num_beams=3, max_new_tokens=30)
    assert Path(figure).is_file() and len(gallery) >= 1
    model, processor = space["model"], space["processor"]
    top_beams = processor.batch_decode(model.generate(**processor(images=[str(space["photo"])]), num_beams=3, max_new_tokens=30,
                                                      num_return_sequences=3))
    assert [row[1] for row in beams["data"]] == top_beams


def test_clicking_an_example_captions_it(space, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(space["url"])
    wait = WebDriverWait(browser, CAPTION_SECONDS)
    wait.until(lambda driver: driver.find_element(By.CSS_SELECTOR, "button.gallery-item")).click()  # the copied test image
    caption = wait.until(lambda driver: driver.find_element(By.CSS_SELECTOR, "#caption textarea").get_attribute("value"))
    assert caption == python_api_caption(space, num_beams=3, max_new_tokens=30)
