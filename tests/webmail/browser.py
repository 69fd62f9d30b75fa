"""Headless Chromium (Debian's chromium and chromium-driver) driven by Selenium, for the
webmail tests: a browser that trusts only the lab's webmail certificates, and helpers to log
in to Roundcube, find a message in the list and open it."""
import base64
import os
import subprocess
import tempfile
import time

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait


def spki_sha256(cert_file):
    """The base64 SHA-256 of a certificate's public key, as Chromium pins it."""
    pub = subprocess.run(["openssl", "x509", "-pubkey", "-noout", "-in", cert_file],
                         check=True, capture_output=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub,
                         check=True, capture_output=True).stdout
    digest = subprocess.run(["openssl", "dgst", "-sha256", "-binary"], input=der,
                            check=True, capture_output=True).stdout
    return base64.b64encode(digest).decode()


class Browser:
    def __init__(self, state, shots, lang="en-US"):
        self.shots = shots
        os.makedirs(shots, exist_ok=True)
        self.profile = tempfile.TemporaryDirectory(prefix="pecora-chromium-")
        # The lab's webmail certificates only (their keys pinned): any other certificate
        # error still fails the page.
        pins = ",".join(spki_sha256(p["tls_cert"]) for p in state["providers"])
        o = webdriver.ChromeOptions()
        o.binary_location = "/usr/bin/chromium"
        for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1000",
                  f"--user-data-dir={self.profile.name}", f"--lang={lang}",
                  f"--ignore-certificate-errors-spki-list={pins}"):
            o.add_argument(a)
        o.add_experimental_option("prefs", {"intl.accept_languages": lang})
        self.d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=o)
        self.d.set_page_load_timeout(60)

    def close(self):
        try:
            self.d.quit()
        finally:
            self.profile.cleanup()

    def shot(self, name):
        path = os.path.join(self.shots, name + ".png")
        self.d.save_screenshot(path)
        print(f"screenshot: {path}", flush=True)
        return path

    def wait(self, cond, timeout=60):
        return WebDriverWait(self.d, timeout).until(cond)

    def settle(self):
        """Waits until the page's own requests are over. Roundcube keeps its session in the
        database and a request still running when the browser moves on can store its stale
        copy over the next page's (losing, e.g., a compose session)."""
        try:
            self.wait(lambda d: d.execute_script(
                "return !window.rcmail || (!rcmail.busy && (!window.jQuery || jQuery.active == 0))"), timeout=30)
        except WebDriverException:
            pass
        time.sleep(0.3)

    def get(self, url):
        self.settle()
        self.d.get(url)

    def login(self, url, user, password):
        self.d.delete_all_cookies()
        self.get(url + "?_task=logout")
        self.d.get(url)
        self.wait(EC.presence_of_element_located((By.ID, "rcmloginuser")))
        self.d.find_element(By.ID, "rcmloginuser").send_keys(user)
        self.d.find_element(By.ID, "rcmloginpwd").send_keys(password)
        self.d.find_element(By.ID, "rcmloginsubmit").click()
        self.wait(EC.presence_of_element_located((By.ID, "messagelist")))
        self.url = url
        self.settle()

    def list_folder(self, mbox):
        self.get(f"{self.url}?_task=mail&_mbox={mbox}")
        self.wait(EC.presence_of_element_located((By.ID, "messagelist")))
        self.wait(lambda d: d.execute_script(
            "return window.rcmail && rcmail.message_list && !rcmail.busy"))

    def rows(self):
        """The listed messages: uid, subject text, row classes, PEC kind and badge."""
        return self.d.execute_script("""
            var out = [];
            $.each(rcmail.message_list.rows, function(uid, row) {
                var tr = $(row.obj);
                out.push({uid: String(uid), text: tr.find('td.subject').text(),
                          cls: tr.attr('class'), kind: tr.attr('data-pecora-kind') || null,
                          badge: tr.find('.pecora-badge').text()});
            });
            return out;""")

    def find_row(self, mbox, contains, timeout=60):
        """Waits until a message whose subject contains `contains` is listed in `mbox`."""
        deadline = time.time() + timeout
        while True:
            self.list_folder(mbox)
            for r in self.rows():
                if contains in r["text"]:
                    return r
            if time.time() > deadline:
                raise AssertionError(f"no message with {contains!r} in {mbox}: {self.rows()}")
            time.sleep(2)

    def open(self, mbox, uid):
        self.get(f"{self.url}?_task=mail&_mbox={mbox}&_uid={uid}&_action=show")
        self.wait(EC.presence_of_element_located((By.ID, "messagebody")))

    def text(self, css):
        els = self.d.find_elements(By.CSS_SELECTOR, css)
        return els[0].text if els else None


__all__ = ["Browser", "By", "EC", "WebDriverException"]
