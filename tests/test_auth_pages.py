"""Signing up, in and out, and managing API keys, in Chromium against a running portal."""

import re

import httpx
import pytest
from playwright.sync_api import Page, expect

from portal.infra.db import build_engine, session_scope
from portal.models import Role
from portal.services.accounts import users

pytestmark = [pytest.mark.slow, pytest.mark.browser]

PASSWORD = "a long test password"


def sign_up(page: Page, portal, email: str) -> None:
    page.goto(portal.url + "/signup")
    page.locator("#email").fill(email)
    page.locator("#password").fill(PASSWORD)
    page.locator("#confirm").fill(PASSWORD)
    page.locator("#submit-sign-up").click()
    expect(page).to_have_url(re.compile(r"/account/?$"))


def sign_in(page: Page, portal, email: str, password: str = PASSWORD) -> None:
    page.goto(portal.url + "/login")
    page.locator("#email").fill(email)
    page.locator("#password").fill(password)
    page.locator("#submit-sign-in").click()


def test_sign_up_sign_in_create_and_revoke_a_key_and_sign_out(portal, page: Page):
    sign_up(page, portal, "pat@example.com")
    expect(page.locator("#account-email")).to_have_text("pat@example.com")
    expect(page.locator("#account-roles")).to_contain_text("customer")
    # The session lives in an HttpOnly cookie that page scripts cannot read.
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["portal_session"]["httpOnly"] and cookies["portal_session"]["sameSite"] == "Lax"
    assert "portal_session" not in page.evaluate("document.cookie")

    page.locator("#sign-out").click()
    expect(page).to_have_url(re.compile(r"/$"))
    expect(page.get_by_role("link", name="Sign in")).to_be_visible()
    page.goto(portal.url + "/account")
    expect(page).to_have_url(re.compile(r"/login\?next=/account"))

    sign_in(page, portal, "pat@example.com")
    expect(page).to_have_url(re.compile(r"/account/?$"))
    page.locator("#key-name").fill("laptop script")
    page.get_by_text("clusters:read").click()
    page.get_by_text("account:read").click()  # what GET /me asks of a key
    page.locator("#create-key").click()
    key = page.locator("#new-api-key").inner_text()
    assert key.startswith("gpk_")
    expect(page.locator("#api-key-table")).to_contain_text("laptop script")
    # Made just now, shown in the browser's zone with the UTC time on hover; not used yet.
    expect(page.locator("#api-key-table .local-time").first).to_have_attribute("title", re.compile(r" UTC$"))
    expect(page.locator("#api-key-table")).to_contain_text("never")
    assert httpx.get(portal.url + "/api/v1/me", headers={"Authorization": f"Bearer {key}"}).status_code == 200

    page.get_by_role("button", name="Revoke").first.click()
    page.get_by_role("alertdialog").get_by_role("button", name="Revoke").click()
    expect(page.locator("#no-api-keys")).to_be_visible()
    assert httpx.get(portal.url + "/api/v1/me", headers={"Authorization": f"Bearer {key}"}).status_code == 401

    page.locator("#sign-out").click()
    expect(page.get_by_role("link", name="Sign in")).to_be_visible()


def test_a_wrong_password_is_explained_on_the_page(portal, page: Page):
    sign_in(page, portal, "nobody@example.com", "not the password")
    expect(page.locator("#auth-error")).to_have_text("Wrong email or password.", timeout=20_000)
    expect(page).to_have_url(re.compile(r"/login"))


def test_a_browser_signed_out_elsewhere_loses_its_session(portal, page: Page, browser):
    sign_up(page, portal, "sam@example.com")
    other = browser.new_context()
    other_page = other.new_page()
    sign_in(other_page, portal, "sam@example.com")
    expect(other_page).to_have_url(re.compile(r"/account/?$"))
    # Revoke the other browser from this one.
    page.reload()
    page.get_by_role("button", name="Revoke").first.click()
    other_page.goto(portal.url + "/account")
    expect(other_page).to_have_url(re.compile(r"/login"))
    other.close()


def test_only_admins_see_the_audit_log(portal, page: Page):
    engine = build_engine(portal.database_url)
    with session_scope(engine) as session:
        users.create_user(session, email="root@example.com", password=PASSWORD, roles=[Role.ADMIN])
    engine.dispose()
    sign_up(page, portal, "eve@example.com")
    page.goto(portal.url + "/admin/audit")
    expect(page.get_by_text("This needs the admin role.")).to_be_visible()
    expect(page.locator("#audit-table")).to_have_count(0)

    page.locator("#account-menu").click()
    page.get_by_role("menuitem", name="Sign out").click()
    expect(page.get_by_role("link", name="Sign in")).to_be_visible()
    sign_in(page, portal, "root@example.com")
    expect(page).to_have_url(re.compile(r"/account/?$"))
    page.goto(portal.url + "/admin/audit")
    expect(page.locator("#audit-table")).to_contain_text("user.signup")
    expect(page.locator("#audit-table")).to_contain_text("eve@example.com")  # people, not user:<uuid>
    page.get_by_placeholder("action or prefix, e.g. auth.").fill("user.signup")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#audit-table")).not_to_contain_text("auth.login")


def test_a_browser_wallet_signs_in_by_signing_the_challenge(portal, page: Page):
    from solders.keypair import Keypair

    wallet = Keypair()
    address = str(wallet.pubkey())
    # A wallet extension, played by the test: it signs with a real ed25519 key held in Python.
    page.expose_function("testWalletSign", lambda message: list(bytes(wallet.sign_message(bytes(message)))))
    page.add_init_script(f"""
        window.solana = {{
          publicKey: {{ toString: () => "{address}" }},
          connect: async () => ({{ publicKey: {{ toString: () => "{address}" }} }}),
          signMessage: async (bytes) => ({{
            signature: new Uint8Array(await window.testWalletSign(Array.from(bytes))),
          }}),
        }};
    """)
    page.goto(portal.url + "/login")
    page.locator("#wallet-sign-in").click()
    expect(page).to_have_url(re.compile(r"/account/?$"))
    expect(page.locator("#account-menu")).to_contain_text(address[:4])
    expect(page.locator("#account-roles")).to_contain_text("customer")


def test_without_a_wallet_the_page_says_what_to_install(portal, page: Page):
    page.goto(portal.url + "/login")
    page.locator("#wallet-sign-in").click()
    expect(page.locator("#auth-error")).to_contain_text("No Solana wallet was found")


def test_a_provider_links_a_payout_wallet_from_the_account_page(portal, page: Page):
    from solders.keypair import Keypair

    wallet = Keypair()
    address = str(wallet.pubkey())
    page.expose_function("testWalletSign", lambda message: list(bytes(wallet.sign_message(bytes(message)))))
    page.add_init_script(f"""
        window.solana = {{
          connect: async () => ({{ publicKey: {{ toString: () => "{address}" }} }}),
          signMessage: async (bytes) => ({{
            signature: new Uint8Array(await window.testWalletSign(Array.from(bytes))),
          }}),
        }};
    """)
    sign_up(page, portal, "payee@example.com")
    page.locator("#link-wallet").click()
    expect(page.locator("#account-wallet")).to_have_text(address)


def test_a_deep_link_is_kept_through_sign_in(portal, page: Page):
    engine = build_engine(portal.database_url)
    with session_scope(engine) as session:
        users.create_user(session, email="deep@example.com", password=PASSWORD, roles=[Role.CUSTOMER])
    engine.dispose()
    # A marketplace row's Deploy, followed while signed out.
    page.goto(portal.url + "/deploy?gpu_model=A100-80GB&country=NL")
    expect(page).to_have_url(re.compile(r"/login\?next="))
    page.locator("#email").fill("deep@example.com")
    page.locator("#password").fill(PASSWORD)
    page.locator("#submit-sign-in").click()
    expect(page).to_have_url(re.compile(r"/deploy/?\?gpu_model=A100-80GB&country=NL$"))
    expect(page.locator("#deploy-model")).to_contain_text("A100-80GB")
    expect(page.locator("#deploy-countries")).to_have_value("NL")
