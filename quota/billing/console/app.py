"""The console as an aiohttp sub-application, assembled from its pages and forms.

Invariant: this is the one module that knows every part of the console; the
billing API's app mounts what `console_app` returns at /console/.
"""

from __future__ import annotations

from aiohttp import web

from quota.billing.console import forms, pages, views
from quota.billing.console.web import HERE, SERVICE, guard
from quota.billing.service import BillingService
from quota.webpages import setup_templates


def console_app(service: BillingService) -> web.Application:
    """The console, to be mounted at /console on the billing API's application."""
    app = web.Application(middlewares=[guard])
    app[SERVICE] = service
    env = setup_templates(
        app, HERE / "templates", {"coin": views.coin, "signed_coin": views.signed_coin}
    )
    env.globals["form_key"] = forms.form_key
    app.router.add_static("/static", HERE / "static")
    pages.add_routes(app.router)
    forms.add_routes(app.router)
    return app
