"""End to end in a real headless Chromium: upload a photo, see its caption, hover a word and see the
heatmap; rate a caption on the review page, reload, and see the rating kept. Screenshots go to the test's
folder (and to $CAPTIONER_SCREENSHOTS when set) to be looked at."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from captioner.cli.command import main
from captioner.serve.background import running_server

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM.exists() and DRIVER.exists()),
                                reason="Chromium not installed (apt-get install chromium chromium-driver)")
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ready  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path, tmp_path_factory):
    evaluation = tmp_path_factory.mktemp("browser") / "eval"
    assert main(["evaluate", "--model_path", str(tiny_checkpoint), "--recommended", "--max_images", "8",
                 "--output_dir", str(evaluation)]) == 0
    with running_server(tiny_checkpoint, "--eval_dir", str(evaluation)) as running:
        yield running.url, evaluation


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--window-size=1280,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=str(DRIVER)))
    yield driver
    driver.quit()


def screenshot(driver, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    if os.environ.get("CAPTIONER_SCREENSHOTS"):
        target = Path(os.environ["CAPTIONER_SCREENSHOTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / path.name)


def test_caption_page_upload_and_hover(server, browser, tiny_checkpoint: Path, tmp_path: Path) -> None:
    url, _ = server
    image = sorted((tiny_checkpoint.parents[2] / "shapes").rglob("*.png"))[0]
    browser.get(url + "/")
    wait = WebDriverWait(browser, 30)
    browser.find_element(By.ID, "file").send_keys(str(image))
    caption = wait.until(ready.visibility_of_element_located((By.ID, "caption-text")))
    words = caption.find_elements(By.CSS_SELECTOR, ".word")
    assert words and caption.text.strip()
    assert browser.find_element(By.ID, "photo").get_attribute("alt") == caption.text.strip()
    tags = browser.find_elements(By.CSS_SELECTOR, "#tags .tag")  # the concepts under the caption
    assert len(tags) == 10 and all(tag.text.endswith("%") for tag in tags)
    webdriver.ActionChains(browser).move_to_element(words[0]).perform()
    wait.until(lambda d: d.find_element(By.ID, "overlay").get_attribute("data-drawn") == "true")
    painted = browser.execute_script(
        "const c = document.getElementById('overlay');"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n;")
    assert painted > 0, "hovering a word drew no heatmap"
    assert "active" in words[0].get_attribute("class")
    screenshot(browser, tmp_path, "caption_page")
    # the controls started from the model's recommended decoding (TINY_DECODING), and the caption used it
    assert browser.find_element(By.ID, "recommended-hint").is_displayed()
    assert browser.find_element(By.ID, "beam_size").get_attribute("value") == "2"
    assert browser.find_element(By.ID, "no_repeat_ngram").is_selected()
    assert "(beam 2, length penalty 1, no word pair twice)" in browser.find_element(By.ID, "status").text
    penalty = browser.find_element(By.ID, "length_penalty")
    penalty.clear()
    penalty.send_keys("0.5")
    browser.find_element(By.ID, "flip_average").click()
    browser.find_element(By.ID, "again").click()
    wait.until(lambda d: "length penalty 0.5, no word pair twice), averaged with the mirror image"
               in d.find_element(By.ID, "status").text)
    browser.execute_script("document.getElementById('settings').scrollIntoView()")
    screenshot(browser, tmp_path, "caption_page_settings")
    # a recommendation blocking longer sequences than word pairs names them on the checkbox too
    browser.execute_script("useRecommended({strategy: 'beam', beam_size: 5, length_penalty: 1.15, no_repeat_ngram: 3})")
    # flickr8k_best's length penalty is a valid value of the field (a step of 0.1 once refused it)
    assert browser.execute_script("return document.getElementById('length_penalty').checkValidity()")
    assert browser.find_element(By.ID, "no_repeat_ngram-text").text == "Never repeat a sequence of 3 words"
    assert browser.find_element(By.ID, "no_repeat_ngram").get_attribute("value") == "3"
    browser.set_window_size(390, 844)  # a phone-sized window
    screenshot(browser, tmp_path, "caption_page_phone")
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
    browser.set_window_size(1280, 900)


def test_photo_chosen_before_the_model_answers_uses_the_recommended_decoding(
        server, browser, tiny_checkpoint: Path) -> None:
    """A slow /api/model once let a photo chosen as the page opened be captioned with the page's defaults."""
    url, _ = server
    slow_model_info = ("const fetchNow = window.fetch; window.fetch = (resource, ...rest) => String(resource)"
                       ".endsWith('/api/model') ? new Promise((done) => setTimeout(done, 1500))"
                       ".then(() => fetchNow(resource, ...rest)) : fetchNow(resource, ...rest);")
    script = browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": slow_model_info})
    try:
        browser.get(url + "/")
        image = sorted((tiny_checkpoint.parents[2] / "shapes").rglob("*.png"))[0]
        browser.find_element(By.ID, "file").send_keys(str(image))
        WebDriverWait(browser, 30).until(lambda d: "Captioned in" in d.find_element(By.ID, "status").text)
        assert "(beam 2, length penalty 1, no word pair twice)" in browser.find_element(By.ID, "status").text
    finally:
        browser.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", {"identifier": script["identifier"]})


def test_review_page_rating_survives_a_reload(server, browser, tmp_path: Path) -> None:
    url, evaluation = server
    browser.get(url + "/review")
    wait = WebDriverWait(browser, 30)
    first = wait.until(ready.visibility_of_element_located((By.CSS_SELECTOR, "article.item")))
    assert "beam 2, length penalty 1, no 2-gram twice" in browser.find_element(By.ID, "summary").text
    label = first.find_element(By.CSS_SELECTOR, "input[name^='fluency'][value='4']").find_element(By.XPATH, "..")
    label.click()
    wait.until(lambda d: "Saved" in first.find_element(By.CSS_SELECTOR, ".saved").text)
    screenshot(browser, tmp_path, "review_page")
    browser.refresh()
    first = wait.until(ready.visibility_of_element_located((By.CSS_SELECTOR, "article.item")))
    checked = first.find_element(By.CSS_SELECTOR, "input[name^='fluency'][value='4']")
    assert checked.is_selected()
    assert (evaluation / "ratings.sqlite").is_file()


@pytest.fixture(scope="module")
def library_server(tiny_checkpoint: Path, tmp_path_factory):
    from tests.library.helpers import collection

    photos = collection(tiny_checkpoint, tmp_path_factory.mktemp("library-page") / "photos", count=8)
    assert main(["index", str(photos), "--model_path", str(tiny_checkpoint)]) == 0
    with running_server(tiny_checkpoint, "--library", str(photos / ".captioner")) as running:
        yield running.url


def test_library_page_search_open_hover_and_read_aloud(library_server, browser, tmp_path: Path) -> None:
    browser.get(library_server + "/library")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#grid .tile img")) == 8)
    tiles = browser.find_elements(By.CSS_SELECTOR, "#grid .tile")
    first = tiles[0].find_element(By.TAG_NAME, "img")
    assert first.get_attribute("alt").endswith(".")  # the caption, as alt text
    wait.until(lambda d: d.execute_script("return [...document.images].filter(i => i.closest('#grid'))"
                                          ".every(i => i.complete && i.naturalWidth > 0)"))  # thumbnails load
    query = browser.find_element(By.ID, "query")
    query.send_keys("a red circle")
    query.submit()
    wait.until(lambda d: "best first" in d.find_element(By.ID, "status").text)
    screenshot(browser, tmp_path, "library_page")
    # keyboard only: Tab lands on a photo, Enter opens it, Escape closes it
    browser.execute_script("document.querySelector('#grid .tile').focus()")
    webdriver.ActionChains(browser).send_keys("\n").perform()
    dialog = wait.until(ready.visibility_of_element_located((By.ID, "viewer")))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#viewer-caption .word"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#viewer-tags .tag")) == 10
    assert len(browser.find_elements(By.CSS_SELECTOR, "#viewer-captions li")) == 2  # one per beam (beam 2)
    wait.until(lambda d: d.execute_script("return document.getElementById('photo').complete"))
    word = browser.find_element(By.CSS_SELECTOR, "#viewer-caption .word")
    webdriver.ActionChains(browser).move_to_element(word).perform()
    wait.until(lambda d: d.find_element(By.ID, "overlay").get_attribute("data-drawn") == "true")
    browser.execute_script("window.spoken = []; window.speechSynthesis.speak = (u) => window.spoken.push(u.text);")
    browser.find_element(By.ID, "speak").click()
    spoken = browser.execute_script("return window.spoken")
    assert spoken == [browser.find_element(By.ID, "photo").get_attribute("alt")] and spoken[0]
    screenshot(browser, tmp_path, "library_photo")
    webdriver.ActionChains(browser).send_keys(webdriver.Keys.ESCAPE).perform()
    wait.until(lambda d: not dialog.is_displayed())
    browser.set_window_size(390, 844)  # a phone-sized window
    screenshot(browser, tmp_path, "library_page_phone")
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
    browser.set_window_size(1280, 900)
