from tunesmith.web_guard import allowed_hosts, check_request, host_name, same_origin

LOCAL = allowed_hosts("127.0.0.1")


def req(**kw):
    base = dict(method="POST", host="127.0.0.1:8000", origin=None, content_type="application/json",
                allowed=LOCAL, json_body=True)
    base.update(kw)
    return check_request(**base)


def test_loopback_server_answers_its_loopback_names_on_any_port():
    for host in ("127.0.0.1:8000", "localhost:9000", "[::1]:8000", "LOCALHOST"):
        assert req(method="GET", host=host) is None


def test_a_foreign_host_header_is_refused_naming_the_host_and_the_fix():
    refusal = req(method="GET", host="evil.example:8000")
    assert refusal is not None and refusal.status == 403
    assert "'evil.example' is not served here" in refusal.message and "--allow-host" in refusal.message
    assert req(method="GET", host=None).status == 403


def test_extra_names_and_all_interfaces():
    assert check_request(method="GET", host="box.lan:80", origin=None, content_type=None,
                         allowed=allowed_hosts("127.0.0.1", ["box.lan"]), json_body=False) is None
    assert allowed_hosts("0.0.0.0") is None and allowed_hosts("::") is None
    assert check_request(method="GET", host="anything", origin=None, content_type=None, allowed=None,
                         json_body=False) is None


def test_cross_origin_state_change_is_refused_but_same_origin_and_no_origin_pass():
    refusal = req(origin="http://evil.example")
    assert refusal.status == 403 and "cross-origin request from 'http://evil.example' refused" in refusal.message
    assert req(origin="null").status == 403
    assert req(origin="http://127.0.0.1:8000") is None
    assert req(origin=None) is None
    assert req(method="GET", origin="http://evil.example") is None  # reading is the browser's CORS job


def test_simple_content_types_on_json_routes_are_refused():
    refusal = req(content_type="text/plain")
    assert refusal.status == 415 and "'text/plain' is not accepted" in refusal.message
    assert req(content_type="application/x-www-form-urlencoded").status == 415
    assert req(content_type=None).status == 415
    assert req(content_type="application/json; charset=utf-8") is None
    assert req(content_type="text/plain", json_body=False) is None


def test_host_name_and_same_origin_parsing():
    assert host_name("[::1]:80") == "::1" and host_name("a.b:1") == "a.b" and host_name("::1") == "::1"
    assert same_origin("http://localhost:8000", "localhost:8000")
    assert not same_origin("http://localhost:8001", "localhost:8000")


def test_allow_host_names_may_carry_a_port_or_brackets():
    # `--allow-host proxy.lan:8443` must not silently match nothing: Host is compared without its port
    allowed = allowed_hosts("127.0.0.1", ["Proxy.LAN:8443", "[fd00::1]"])
    assert {"proxy.lan", "fd00::1"} <= allowed
    assert req(method="GET", host="proxy.lan:8443", allowed=allowed) is None


def test_servers_without_allow_host_do_not_suggest_it():
    refusal = check_request(method="GET", host="evil.example", origin=None, content_type=None, allowed=LOCAL,
                            json_body=False, more_hosts=None)
    assert refusal.message.endswith("use one of 127.0.0.1, ::1, localhost")


# -- the ASGI middleware both FastAPI servers put in front of their routes ---------------------------------


def _guarded(problem, headers=()):
    import httpx
    from starlette.responses import PlainTextResponse

    from tunesmith.web_guard import WebGuard

    async def app(scope, receive, send):
        await PlainTextResponse(f"route {scope['path']}")(scope, receive, send)

    guard = WebGuard(app, problem=problem, headers=headers)
    return guard, httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://127.0.0.1:9")


def test_the_guard_hands_problem_the_method_decoded_headers_and_path_and_answers_its_refusal():
    import asyncio

    from starlette.responses import PlainTextResponse

    seen = []

    def problem(method, headers, path):
        seen.append((method, headers.get("x-name"), headers.get("host"), path))
        return PlainTextResponse("no", status_code=418) if path == "/refused" else None

    async def scenario():
        _, client = _guarded(problem, headers=[(b"x-frame-options", b"DENY")])
        async with client:
            refused = await client.post("/refused", headers={"X-Name": "caf\u00e9".encode("latin-1")})
            passed = await client.get("/fine")
        return refused, passed

    refused, passed = asyncio.run(scenario())
    assert (refused.status_code, refused.text) == (418, "no")
    assert (passed.status_code, passed.text) == (200, "route /fine")
    # the extra headers go on refusals and on the routes' own answers alike
    assert refused.headers["x-frame-options"] == "DENY" and passed.headers["x-frame-options"] == "DENY"
    assert seen == [("POST", "caf\u00e9", "127.0.0.1:9", "/refused"), ("GET", None, "127.0.0.1:9", "/fine")]


def test_the_guard_adds_no_headers_unless_asked_and_lets_non_http_scopes_through():
    import asyncio

    def refuse_all(method, headers, path):
        raise AssertionError("only HTTP requests are checked")

    async def scenario():
        guard, client = _guarded(lambda m, h, p: None)
        async with client:
            r = await client.get("/x")
        reached = []

        async def lifespan_app(scope, receive, send):
            reached.append(scope["type"])

        from tunesmith.web_guard import WebGuard

        await WebGuard(lifespan_app, problem=refuse_all)({"type": "lifespan"}, None, None)
        return r, reached

    r, reached = asyncio.run(scenario())
    assert r.status_code == 200 and "x-frame-options" not in r.headers
    assert reached == ["lifespan"]
