"""The README's screenshots of the web app, taken in headless Chromium.

    python docs/make_screenshots.py --model_path RUN/best.pt --photo PHOTO.jpg --review_model SHAPES_RUN/best.pt \
        --eval_dir SHAPES_RUN/eval_test_beam3 --output docs

Starts `captioner serve` twice (the caption page with one model, the review page with another), uploads the
photo, points at a word, rates a caption, and saves caption_page.png and review_page.png.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ready
from selenium.webdriver.support.ui import WebDriverWait

from captioner.serve.background import running_server


def browser(width: int, height: int) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     f"--window-size={width},{height}", "--hide-scrollbars"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path="/usr/bin/chromedriver"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", type=Path, required=True)
    parser.add_argument("--photo", type=Path, required=True)
    parser.add_argument("--review_model", type=Path, required=True)
    parser.add_argument("--eval_dir", type=Path, required=True)
    parser.add_argument("--word", type=int, default=1, help="which word of the caption to point at")
    parser.add_argument("--output", type=Path, default=Path("docs"))
    args = parser.parse_args()
    driver = browser(1280, 860)
    try:
        with running_server(args.model_path) as server:
            url = server.url
            driver.get(url + "/")
            driver.find_element(By.ID, "file").send_keys(str(args.photo.resolve()))
            caption = WebDriverWait(driver, 60).until(ready.visibility_of_element_located((By.ID, "caption-text")))
            words = caption.find_elements(By.CSS_SELECTOR, ".word")
            webdriver.ActionChains(driver).move_to_element(words[min(args.word, len(words) - 1)]).perform()
            time.sleep(0.5)
            driver.save_screenshot(str(args.output / "caption_page.png"))
        with running_server(args.review_model, "--eval_dir", str(args.eval_dir)) as server:
            url = server.url
            driver.get(url + "/review")
            first = WebDriverWait(driver, 60).until(ready.visibility_of_element_located((By.CSS_SELECTOR, "article.item")))
            first.find_element(By.CSS_SELECTOR, "input[name^='fluency'][value='4']").find_element(By.XPATH, "..").click()
            first.find_element(By.CSS_SELECTOR, "input[name^='relevance'][value='3']").find_element(By.XPATH, "..").click()
            WebDriverWait(driver, 30).until(lambda d: "Saved: 3" in first.text)
            driver.save_screenshot(str(args.output / "review_page.png"))
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
