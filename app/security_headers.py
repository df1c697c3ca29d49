"""Response headers that keep pages from being framed, sniffed or made to run foreign code
(issue 17 item 6).

Scripts come only from this origin: the pages load htmx, app.js and the React islands as files
under /static (no inline script anywhere), so `script-src 'self'` costs nothing. Styles allow
'unsafe-inline' because htmx adds its indicator style element at load and the islands' libraries
(React Flow, uPlot) set style attributes; a style cannot run code. WebSocket log streams are
same-origin (`connect-src 'self'` covers ws: and wss: to this host in current browsers).
"""

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data:",
    "font-src 'self'",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])

HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",  # for browsers that ignore frame-ancestors
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def init_app(app):
    @app.after_request
    def add_security_headers(response):
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        return response
