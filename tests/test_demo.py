"""The demo page (bisenet-pl demo): started on 127.0.0.1 and used through gradio_client as a person's
browser uses it, its labels checked against bisenet-pl predict; and, where Chromium is installed, a
real headless browser uploading an image and waiting for the overlay."""

import os
import shutil
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import CAMVID_DIR

from bisenet_pl.cli import main
from bisenet_pl.data.io import read_label, write_image
from bisenet_pl.demo import DemoModel, build_app

REPO = Path(__file__).resolve().parents[1]
VAL_IMAGE = CAMVID_DIR / "val" / "0016E5_07959.png"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def model():
    model = DemoModel.load("bisenetv2_camvid")
    yield model
    model.close()


@pytest.fixture(scope="module")
def page(model):
    app = build_app(model)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    app.close()


@pytest.fixture(scope="module")
def client(page):
    from gradio_client import Client

    return Client(page, verbose=False)


@pytest.fixture
def camvid_image(tmp_path):
    if VAL_IMAGE.is_file():
        return VAL_IMAGE
    path = tmp_path / "frame.png"  # without the shared data: a bundled example frame
    shutil.copy(REPO / "bisenet_pl" / "demo_examples" / "0016E5_06390.jpg", path.with_suffix(".jpg"))
    return path.with_suffix(".jpg")


def test_the_page_gives_the_labels_bisenet_pl_predict_writes(client, camvid_image, tmp_path, capsys):
    from gradio_client import handle_file

    overlay, colours, shares, labels_file, message = client.predict(
        handle_file(str(camvid_image)), "PyTorch", api_name="/segment"
    )
    labels = read_label(Path(labels_file))
    out = tmp_path / "predict"
    main([
        "predict", "--config", str(REPO / "configs" / "camvid.yaml"), "--model.pretrained=bisenetv2_camvid",
        f"--data.root={tmp_path}", f"--data.predict_source={camvid_image}", f"--prediction_writer.output_dir={out}",
        "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32", "--trainer.logger=false",
        "--data.num_workers=0", "--progress_bar.refresh_rate=0", f"--trainer.default_root_dir={tmp_path}",
    ])  # fmt: skip
    expected = read_label(out / "labels" / f"{camvid_image.stem}.png")
    assert labels.shape == expected.shape == (360, 480) and np.array_equal(labels, expected)
    assert cv2.imread(overlay).shape == cv2.imread(colours).shape == (360, 480, 3)
    shown = {item["label"]: item["confidence"] for item in shares["confidences"]}
    assert shown["Road"] == pytest.approx(np.mean(labels == 3), abs=1e-6) and len(shown) == 11
    assert "PyTorch" in message and " ms for the network on 480x360 pixels" in message


def test_an_exported_runtime_agrees_with_pytorch(model, camvid_image):
    image = cv2.cvtColor(cv2.imread(str(camvid_image)), cv2.COLOR_BGR2RGB)
    expected, _ = model.labels(image, "PyTorch")
    runtime = "OpenVINO" if "OpenVINO" in model.runtimes else "ONNX Runtime"
    labels, milliseconds = model.labels(image, runtime)
    assert np.mean(labels == expected) > 0.999 and milliseconds > 0  # fp32: argmax ties may differ


def test_bad_uploads_are_a_message_on_the_page(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(AppError, match=r"notes.png is not an image this page reads"):
        client.predict(handle_file(str(text)), "PyTorch", api_name="/segment")
    gray = tmp_path / "gray.png"
    write_image(gray, np.full((48, 64), 128, np.uint8))
    *_, message = client.predict(handle_file(str(gray)), "PyTorch", api_name="/segment")
    assert "a grayscale image" in message
    rgba = tmp_path / "rgba.png"
    cv2.imwrite(str(rgba), np.full((48, 64, 4), 200, np.uint8))
    *_, message = client.predict(handle_file(str(rgba)), "PyTorch", api_name="/segment")
    assert "its transparency was dropped" in message


def test_a_video_gives_an_overlay_video(client, tmp_path):
    from gradio_client import handle_file

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 64))
    for index in range(6):
        writer.write(np.full((64, 96, 3), 40 * index, np.uint8))
    writer.release()
    result, message = client.predict(handle_file(str(video)), "PyTorch", api_name="/segment_video")
    path = result["video"] if isinstance(result, dict) else result
    capture = cv2.VideoCapture(path)
    frames = 0
    while capture.read()[0]:
        frames += 1
    assert frames == 6 and "6 frames" in message


def browser():
    """Headless Chromium through Selenium, or the reason there is none."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        return None, "no Chromium here: install Debian's chromium and chromium-driver (.ci/run does)"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1600"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(driver), options=options), ""


def test_a_real_browser_uploads_an_image_and_sees_the_overlay(page, camvid_image, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    driver, reason = browser()
    if driver is None:
        pytest.skip(reason)
    try:
        driver.get(page)
        wait = WebDriverWait(driver, 180)  # a cold Chromium start on a busy 2-core machine is slow
        wait.until(expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, "#segment")))
        driver.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(camvid_image))
        # The page shows the uploaded file's stem and suffix apart.
        wait.until(expected_conditions.text_to_be_present_in_element((By.CSS_SELECTOR, "#upload"), camvid_image.stem))
        driver.find_element(By.CSS_SELECTOR, "#segment").click()
        wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#overlay img")))
        wait.until(
            expected_conditions.text_to_be_present_in_element((By.CSS_SELECTOR, "#timing"), "ms for the network")
        )
        screenshot = tmp_path / "demo_page.png"
        driver.save_screenshot(str(screenshot))
        assert cv2.imread(str(screenshot)).shape[1] >= 1000
        if os.environ.get("BISENET_PL_SCREENSHOT"):  # how the README's picture is made
            shutil.copy(screenshot, os.environ["BISENET_PL_SCREENSHOT"])
    finally:
        driver.quit()


@pytest.mark.parametrize("port", ["99999", "0", "-1", "http"])
def test_a_port_out_of_range_is_one_line_naming_the_option(port, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", f"--port={port}"])
    assert exit_info.value.code == 2
    assert f"argument --port: expected a port number in 1-65535, got '{port}'" in capsys.readouterr().err
