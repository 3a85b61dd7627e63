"""The blinded side-by-side spot check: read outputs yourself before you ship.

The guide: *sample twenty outputs from your fine-tuned model and twenty from the base model on the
same prompts; read them side by side, blinded; if the answer ("would I ship this?") is no for more
than two or three of the twenty, do not ship it.*

Three steps::

    sc = build_spotcheck(items, n=20, seed=0)      # items: [{id, prompt, base_output, tuned_output}]
    sc.save(run_dir / "spotcheck")                  # spotcheck.html, spotcheck.json, key.json
    server, url = serve_spotcheck(run_dir / "spotcheck")   # open url; answers.json is saved as you go
    ...
    server.close()
    result = unblind(sc.key, json.loads((run_dir / "spotcheck" / "answers.json").read_text()))
    print(result.summary)   # would ship 17/20 tuned vs 12/20 base, preferred tuned in 14/20 -> ship

The page never names the models: per item the two outputs are labelled A and B in a random order,
and the key ({item_id: {"A": "base"|"tuned", "B": ...}}) is kept out of the page (``key.json`` next
to it, never served by `serve_spotcheck`). The page is self-contained (inline CSS and JS from `page.css` and `page.js`, a
Content-Security-Policy that allows only its own script and same-origin requests).

Saving answers: served by `serve_spotcheck`, the page POSTs every change to ``/answers`` (one
item's full state: ``{"id", "ship_A", "ship_B", "preference"}``), and the server rewrites
``answers.json`` atomically each time. The server answers only to its own names and takes POSTs only
from its own page or a program, as JSON (`tunesmith.web_guard`: other web sites may not read or
write the answers). Opened from ``file://``, the page keeps answers in the browser's localStorage and
offers a "download answers" button that saves the same JSON. The page has no test hook, served or
opened as a file: only a person's clicks answer (browser tests inject their own).

``answers.json`` (and the downloaded file)::

    {"spotcheck": "<page id>", "updated": "<ISO time>",
     "answers": {item_id: {"ship_A": true|false|null, "ship_B": true|false|null,
                           "preference": "A"|"B"|"tie"|null}}}

The ship rule, scaled from 3-of-20 to any n: the tuned model fails the spot check when more than
15 % of its outputs are marked "would not ship" (n=20: 4 or more). With answers missing, the verdict
is "incomplete" unless the missing answers could not change it.

Modules: `page` (build and save), `server` (serve and collect answers), `answers` (their format),
`unblind` (count and the ship rule), `runs` (all of it for a run's stored outputs).
"""

from tunesmith.evaluate.spotcheck.answers import ANSWERS_NAME
from tunesmith.evaluate.spotcheck.page import KEY_NAME, MANIFEST_NAME, PAGE_NAME, Spotcheck, build_spotcheck
from tunesmith.evaluate.spotcheck.server import SpotcheckServer, serve_spotcheck
from tunesmith.evaluate.spotcheck.unblind import SpotcheckResult, unblind

__all__ = [
    "ANSWERS_NAME",
    "KEY_NAME",
    "MANIFEST_NAME",
    "PAGE_NAME",
    "Spotcheck",
    "SpotcheckResult",
    "SpotcheckServer",
    "build_spotcheck",
    "serve_spotcheck",
    "unblind",
]
