"""What the end-to-end tests share besides fixtures."""


class Caller:
    """One user's view of the API, failing loudly on an unexpected status."""

    def __init__(self, client, headers):
        self.client, self.headers = client, headers

    def __call__(self, method, path, body=None, status=200):
        response = self.client.open(f"/api/v1{path}", method=method, json=body, headers=self.headers)
        assert response.status_code == status, f"{method} {path}: {response.status_code} {response.text}"
        return response.json if response.data and response.is_json else response.text
