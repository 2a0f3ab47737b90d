"""The Gradio chat: layout and events only. Answering lives in app/qa.py, storage in feedback_store/.

Per browser session the UI keeps a `gr.State` dict:
    session_id  random id; the rater session recorded with every piece of feedback
    history     plain chat turns [{"role", "content": str}] given to the model for follow-ups
    answers     {chat message index: candidate id} so a thumbs on any answer reaches the right row
    last        the latest interaction: id, question, passages shown, answer candidate id, alternatives
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Iterator
from typing import Any

from app.config import AppConfig
from app.limits import RateLimited, RateLimiter
from app.qa import AskResult, QAError, plain_history
from app.ranking import TWO_WAY_CHOICES, RankingError, parse_order, two_way
from app.render import inert_markdown, snippet
from app.services import Services

log = logging.getLogger(__name__)
LABELS = ["A", "B", "C", "D"]
_NO_LOGIN_ADMIN = " (this server has no logins: use `ragqa feedback stats`, `ragqa models list` and `ragqa models rollback`)"
MAX_CANDIDATES = 4


def new_state() -> dict[str, Any]:
    return {"session_id": f"web:{uuid.uuid4().hex[:12]}", "history": [], "answers": {}, "last": None}


# ---- rendering ---------------------------------------------------------------------------------------
def sources_markdown(passages: list[Any], cited: list[int], mode: str) -> str:
    if not passages:
        return "_No sources yet._"
    lines = []
    for p in passages:
        mark = " · **cited**" if p.rank in cited else ""
        if p.rank in cited and mode == "inferred":
            mark = " · **cited (inferred)**"
        lines.append(
            f"**[{p.rank}] {inert_markdown(p.source)}** · score {p.score:.3f}{mark}\n\n> {inert_markdown(snippet(p.text))}"
        )
    return "\n\n".join(lines)


def answer_markdown(result: AskResult) -> str:
    text = inert_markdown(result.answer) or "_(empty answer)_"
    if result.cited:
        refs = ", ".join(f"[{r}]" for r in result.cited)
        note = " (inferred)" if result.citation_mode == "inferred" else ""
        text += f"\n\n<sub>Sources: {refs}{note}</sub>"
    if not result.finished:
        text += "\n\n<sub>(cut at the length or time limit)</sub>"
    return text


def chat_value(state: dict[str, Any], pending: str | None = None, question: str | None = None) -> list[dict]:
    shown = [dict(m) for m in state.get("display", [])]
    if question is not None:
        shown.append({"role": "user", "content": inert_markdown(question)})
        shown.append({"role": "assistant", "content": inert_markdown(pending or "") or "…"})
    return shown


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _ok(msg: str) -> str:
    return f"✅ {msg}"


def _err(msg: str) -> str:
    return f"⚠️ {msg}"


# ---- handlers (plain functions: unit-testable without a browser) -------------------------------------
class Handlers:
    """Event handlers. `user` is the logged-in name (None without logins); feedback is attributed to it."""

    def __init__(self, services: Services, users: Any = None) -> None:
        self.s = services
        self.users = users
        self.limiter = RateLimiter(services.config.rate_limit_per_minute)

    def is_admin(self, user: str | None) -> bool:
        """Without logins nobody is an admin in the web UI: any page the browser opens (or a DNS-rebinding one)
        could act as that visitor, so counts, versions and rollback are command-line only then."""
        if self.users is None:
            return False
        found = self.users.get(user)
        return bool(found and found.is_admin)

    def _limit(self, user: str | None, state: dict[str, Any]) -> None:
        self.limiter.check(user or state["session_id"])

    def model_label(self) -> str:
        name = self.s.qa.registry.current_name()
        return f"Model: **{name or 'none (run ragqa setup)'}**"

    def ask(self, question: str, state: dict[str, Any] | None, user: str | None = None) -> Iterator[tuple]:
        """Stream an answer. Yields (chat, sources, model label, status, state, cleared textbox)."""
        state = state or new_state()
        state.setdefault("display", [])
        state["user"] = user
        try:
            q = self.s.qa.check_question(question)
            self._limit(user, state)
            pieces: list[str] = []
            for kind, value in self.s.qa.stream(q, state["history"]):
                if kind == "sources":
                    sources = sources_markdown(value, [], "none")
                    yield chat_value(state, "", q), sources, self.model_label(), "Answering…", state, ""
                elif kind == "token":
                    pieces.append(value)
                    yield (
                        chat_value(state, "".join(pieces), q),
                        sources,
                        self.model_label(),
                        "Answering…",
                        state,
                        "",
                    )
                else:
                    result: AskResult = value
        except (QAError, RateLimited) as e:
            yield (
                chat_value(state),
                sources_markdown([], [], "none"),
                self.model_label(),
                _err(str(e)),
                state,
                question,
            )
            return
        status = self._record_answer(q, result, state)
        state["display"].append({"role": "user", "content": inert_markdown(q)})
        state["display"].append({"role": "assistant", "content": answer_markdown(result)})
        state["answers"][str(len(state["display"]) - 1)] = (
            state["last"]["answer_id"] if state["last"] else None
        )
        state["history"] += [{"role": "user", "content": q}, {"role": "assistant", "content": result.answer}]
        sources = sources_markdown(result.passages, result.cited, result.citation_mode)
        label = f"Model: **{result.model_version}** · {result.backend}"
        fallback = self.s.qa.generator.fallback_reason
        if fallback:
            label += f" ({inert_markdown(fallback)})"
        yield chat_value(state), sources, label, status, state, ""

    def _record_answer(self, question: str, result: AskResult, state: dict[str, Any]) -> str:
        # The turns the model saw: plain_history drops empty answers, which the store would refuse as context.
        context = plain_history(state["history"])
        candidate = {
            "text": result.answer,
            "model_version": result.model_version,
            "sampling": {"do_sample": False, "max_new_tokens": self.s.config.max_new_tokens},
            "latency_ms": result.timings_ms["total"],
            "label": "answer",
        }
        try:
            ids = self.s.store.record_interaction(
                question,
                [p.to_dict() for p in result.passages],
                [candidate],
                context=context,
                session_id=state["session_id"],
                user=state.get("user"),
            )
        except Exception as e:  # the answer is still shown; say clearly that feedback on it cannot be saved
            log.exception("recording the interaction failed")
            state["last"] = None
            return _err(
                f"answered, but the feedback store is unavailable ({e}); feedback on this answer is off"
            )
        state["last"] = {
            "interaction_id": ids.interaction_id,
            "question": question,
            "context": context,
            "passages": result.passages,
            "answer_id": ids.candidate_ids[0],
            "alternatives": {},
            "token": None,
        }
        t = result.timings_ms
        rate = result.generation.get("decode_tokens_per_s")
        speed = f", {rate:.0f} tokens/s" if rate else ""
        return f"Answered in {t['total'] / 1000:.1f} s (first token {t['first_token'] / 1000:.1f} s{speed})."

    def alternatives(self, n: int, state: dict[str, Any], user: str | None = None) -> tuple:
        """Sample n candidates for the latest question and passages; returns n markdown boxes + visibility."""
        last = (state or {}).get("last")
        hidden = [_box_update(None, False)] * MAX_CANDIDATES
        if not last:
            return (*hidden, _ranking_visibility(0), _err("ask a question first"), state)
        n = int(n or self.s.config.num_candidates)
        try:
            self._limit(user, state)
            cands = self.s.qa.candidates(last["question"], last["passages"], last["context"], n=n)
            records = [dict(c.to_record(), label=LABELS[i]) for i, c in enumerate(cands)]
            ids = self.s.store.add_candidates(last["interaction_id"], records)
        except (QAError, RateLimited) as e:
            return (*hidden, _ranking_visibility(0), _err(str(e)), state)
        except Exception as e:
            log.exception("sampling or storing alternatives failed")
            return (*hidden, _ranking_visibility(0), _err(f"could not store the alternatives: {e}"), state)
        last["alternatives"] = dict(zip(LABELS, ids, strict=False))
        last["token"] = uuid.uuid4().hex  # one ranking per set of alternatives: double submits are idempotent
        boxes = [
            _box_update(f"**{LABELS[i]}**\n\n{inert_markdown(c.text) or '_(empty)_'}", True)
            for i, c in enumerate(cands)
        ]
        boxes += [_box_update(None, False)] * (MAX_CANDIDATES - len(cands))
        return (
            *boxes,
            _ranking_visibility(len(cands)),
            f"{len(cands)} alternatives: rank them below.",
            state,
        )

    def rank(
        self, choice: str | None, order_text: str | None, state: dict[str, Any], user: str | None = None
    ) -> str:
        last = (state or {}).get("last")
        if not last or not last.get("alternatives"):
            return _err("get alternatives first")
        alts: dict[str, int] = last["alternatives"]
        try:
            if len(alts) == 2:
                groups, both_bad = two_way(choice or "")
            else:
                groups, both_bad = parse_order(order_text or "", list(alts)), False
            order = [[alts[label] for label in group] for group in groups]
            rid = self.s.store.record_ranking(
                last["interaction_id"],
                order,
                both_bad=both_bad,
                session_id=state["session_id"],
                user=user,
                client_token=f"rank:{last['token']}",
            )
        except RankingError as e:
            return _err(str(e))
        except Exception as e:
            return _err(f"the ranking was NOT saved: {e}")
        return _ok(f"ranking saved (#{rid}). Thank you!")

    def rate(
        self,
        up: bool,
        reason: str | None,
        state: dict[str, Any],
        candidate_id: int | None = None,
        user: str | None = None,
    ) -> str:
        last = (state or {}).get("last")
        cid = candidate_id if candidate_id is not None else (last or {}).get("answer_id")
        if cid is None:
            return _err("there is no recorded answer to rate yet")
        try:
            rid = self.s.store.record_rating(
                int(cid),
                bool(up),
                reason=(reason or "").strip() or None,
                session_id=state["session_id"],
                user=user,
                # The reason goes in as a digest: a token holding the text itself broke the store's 200-character
                # limit on identifiers, refusing (and losing) every rating with a reason over ~190 characters.
                client_token=f"rate:{cid}:{int(bool(up))}:{_digest((reason or '').strip())}",
            )
        except Exception as e:
            return _err(f"the rating was NOT saved: {e}")
        return _ok(f"{'👍' if up else '👎'} saved (#{rid}).")

    def like(self, index: Any, liked: bool, state: dict[str, Any], user: str | None = None) -> str:
        key = str(index[0] if isinstance(index, list | tuple) else index)
        cid = (state or {}).get("answers", {}).get(key)
        if cid is None:
            return _err("only answers recorded in this session can be rated")
        return self.rate(liked, None, state, candidate_id=cid, user=user)

    def correct(self, text: str, state: dict[str, Any], user: str | None = None) -> str:
        last = (state or {}).get("last")
        if not last:
            return _err("ask a question first")
        replaces = [last["answer_id"], *last.get("alternatives", {}).values()]
        try:
            cid = self.s.store.record_correction(
                last["interaction_id"],
                text or "",
                replaces=replaces,
                session_id=state["session_id"],
                user=user,
                client_token=f"correct:{last['interaction_id']}:{uuid.uuid5(uuid.NAMESPACE_OID, text or '')}",
            )
        except Exception as e:
            return _err(f"the correction was NOT saved: {e}")
        return _ok(f"your answer is saved as a demonstration (#{cid}).")

    def stats(self, user: str | None = None) -> str:
        if not self.is_admin(user):
            return _err(
                f"only admins can see the feedback counts{_NO_LOGIN_ADMIN if self.users is None else ''}"
            )
        try:
            st = self.s.store.stats()
        except Exception as e:
            return _err(f"feedback store unavailable: {e}")
        return stats_markdown(st)

    def versions(self, user: str | None = None) -> str:
        if not self.is_admin(user):
            return _err(f"only admins can see model versions{_NO_LOGIN_ADMIN if self.users is None else ''}")
        current = self.s.qa.registry.current_name()
        rows = [
            f"| {'**' + v.name + '** (current)' if v.name == current else v.name} | {v.created_at} | "
            f"{v.manifest.get('parent') or '-'} | {inert_markdown(str(v.manifest.get('kind', '')))} |"
            for v in self.s.qa.registry.versions()
        ]
        return "| version | created | parent | kind |\n|---|---|---|---|\n" + "\n".join(rows)

    def rollback(self, version: str | None, user: str | None = None) -> str:
        if not self.is_admin(user):
            return _err(
                f"only admins can switch model versions{_NO_LOGIN_ADMIN if self.users is None else ''}"
            )
        from model_store.registry import RegistryError

        try:
            v = self.s.qa.registry.rollback((version or "").strip() or None)
        except RegistryError as e:
            return _err(str(e))
        return _ok(f"current is now {v.name}; the next answer uses it")


def stats_markdown(st: dict[str, Any]) -> str:
    rows = [f"| {k} | {v} |" for k, v in st.items() if not isinstance(v, dict | list)]
    out = "| what | count |\n|---|---|\n" + "\n".join(rows)
    per_version = st.get("per_model_version") or st.get("by_model_version")
    if isinstance(per_version, dict) and per_version:
        out += "\n\n**Per model version**\n\n| version | counts |\n|---|---|\n"
        out += "\n".join(f"| {v} | {inert_markdown(str(c))} |" for v, c in per_version.items())
    return out


def _box_update(value: str | None, visible: bool) -> Any:
    import gradio as gr

    return gr.update(value=value, visible=visible)


def _ranking_visibility(n: int) -> Any:
    import gradio as gr

    return gr.update(visible=n > 0)


def _like_handler(h: Handlers) -> Any:
    """The chat's like event. Gradio passes gr.LikeData only to a parameter whose type hint says so, and the
    hint must resolve at run time (this module's annotations are strings and gradio is imported lazily)."""
    import gradio as gr

    def on_like(evt: Any, state: dict[str, Any], request: Any = None) -> str:
        return h.like(evt.index, evt.liked, state, user=_username(request))

    on_like.__annotations__ = {"evt": gr.LikeData, "state": dict, "request": gr.Request, "return": str}
    return on_like


def _username(request: Any) -> str | None:
    return getattr(request, "username", None) if request is not None else None


def _as_user(fn: Any, n_inputs: int, generator: bool = False) -> Any:
    """Wrap `fn(*inputs, user=...)` as a Gradio handler that reads the logged-in user from gr.Request.

    The user comes from the server-side request (the login cookie), never from anything the client sends.
    """
    import inspect

    import gradio as gr

    params = [inspect.Parameter(f"arg{i}", inspect.Parameter.POSITIONAL_OR_KEYWORD) for i in range(n_inputs)]
    params.append(
        inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=gr.Request)
    )

    if generator:

        def wrapped_gen(*args: Any) -> Any:
            *inputs, request = args
            yield from fn(*inputs, user=_username(request))

        wrapped = wrapped_gen
    else:

        def wrapped_fn(*args: Any) -> Any:
            *inputs, request = args
            return fn(*inputs, user=_username(request))

        wrapped = wrapped_fn
    wrapped.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapped.__annotations__ = {"request": gr.Request}
    return wrapped


# ---- layout ------------------------------------------------------------------------------------------
def build_ui(services: Services, users: Any = None) -> Any:
    import gradio as gr

    h = Handlers(services, users)
    with gr.Blocks(title="rlhf-rag-qa") as demo:
        state = gr.State(new_state)
        with gr.Row():
            gr.Markdown("## rlhf-rag-qa — ask your documents")
            model_md = gr.Markdown(h.model_label())
        with gr.Row():
            with gr.Column(scale=3):
                chat = gr.Chatbot(label="Chat", height=460, sanitize_html=True)
                with gr.Row():
                    question = gr.Textbox(
                        placeholder="Ask a question about your documents…", show_label=False, scale=5
                    )
                    send = gr.Button("Ask", variant="primary", scale=1)
                status = gr.Markdown("")
                with gr.Row():
                    up = gr.Button("👍 Good answer", size="sm")
                    down = gr.Button("👎 Bad answer", size="sm")
                    reason = gr.Textbox(placeholder="Reason (optional)", show_label=False, scale=3)
            with gr.Column(scale=2):
                gr.Markdown("### Sources")
                sources = gr.Markdown("_No sources yet._", sanitize_html=True)
        with gr.Accordion("Compare alternatives and rank them", open=False):
            with gr.Row():
                n_alt = gr.Slider(
                    2, MAX_CANDIDATES, value=services.config.num_candidates, step=1, label="Candidates"
                )
                alt_btn = gr.Button("Get alternatives")
            with gr.Row():
                boxes = [gr.Markdown(visible=False, sanitize_html=True) for _ in range(MAX_CANDIDATES)]
            with gr.Group(visible=False) as rank_group:
                choice = gr.Radio(list(TWO_WAY_CHOICES), label="For two candidates")
                order = gr.Textbox(label="For three or four: best first, e.g. B > A = C > D (= is a tie)")
                rank_btn = gr.Button("Save ranking", variant="primary")
        with gr.Accordion("Write a better answer", open=False):
            correction = gr.Textbox(lines=4, label="Your answer (cite passages as [1], [2]…)")
            correct_btn = gr.Button("Save my answer")
        with gr.Accordion("Admin: feedback collected and model versions", open=False, visible=False) as admin:
            stats_md = gr.Markdown("")
            stats_btn = gr.Button("Refresh counts")
            versions_md = gr.Markdown("")
            with gr.Row():
                version_box = gr.Textbox(
                    placeholder="v0001 (empty: the current version's parent)", show_label=False
                )
                rollback_btn = gr.Button("Roll back / switch")
            admin_status = gr.Markdown("")

        outputs = [chat, sources, model_md, status, state, question]
        ask = _as_user(h.ask, 2, generator=True)
        question.submit(ask, [question, state], outputs, api_name="ask")
        send.click(ask, [question, state], outputs, api_name=False)
        alt_btn.click(
            _as_user(h.alternatives, 2),
            [n_alt, state],
            [*boxes, rank_group, status, state],
            api_name="alternatives",
        )
        rank_btn.click(_as_user(h.rank, 3), [choice, order, state], [status], api_name="rank")

        def rate_up(r: str, s: dict, user: str | None = None) -> str:
            return h.rate(True, r, s, user=user)

        def rate_down(r: str, s: dict, user: str | None = None) -> str:
            return h.rate(False, r, s, user=user)

        up.click(_as_user(rate_up, 2), [reason, state], [status], api_name="rate_up")
        down.click(_as_user(rate_down, 2), [reason, state], [status], api_name="rate_down")
        chat.like(_like_handler(h), [state], [status], api_name=False)
        correct_btn.click(_as_user(h.correct, 2), [correction, state], [status], api_name="correct")
        stats_btn.click(_as_user(h.stats, 0), None, [stats_md], api_name="stats")
        stats_btn.click(_as_user(h.versions, 0), None, [versions_md], api_name="versions")
        rollback_btn.click(_as_user(h.rollback, 1), [version_box], [admin_status], api_name="rollback")

        def on_load(user: str | None = None) -> tuple:
            return h.model_label(), gr.update(visible=h.is_admin(user))

        demo.load(_as_user(on_load, 0), None, [model_md, admin], api_name=False)
    return demo


def launch(
    services: Services, *, prevent_thread_lock: bool = False, users: Any = None, throttle: Any = None
) -> tuple[Any, str]:
    """Start the server; returns (demo, local_url). With `users` (app.auth.Users) every visitor must log in.

    app/access.py guards every request (hosts, origins, login backoff, sessions, uploads); `throttle` replaces
    the default login backoff (tests)."""
    from app.access import UPLOAD_CACHE_CLEANUP, launch_options

    cfg = services.config
    demo = build_ui(services, users)
    # A bounded queue: when it is full, users get Gradio's "queue is full" error instead of a hang.
    demo.queue(default_concurrency_limit=cfg.concurrency, max_size=cfg.max_queue)
    demo.delete_cache = UPLOAD_CACHE_CLEANUP
    _app, url, _ = demo.launch(
        server_name=cfg.host,
        server_port=cfg.port,
        prevent_thread_lock=prevent_thread_lock,
        share=False,
        **launch_options(cfg, users, throttle),
    )
    return demo, url


def serve(cfg: AppConfig, users: Any = None) -> None:
    services = Services(cfg)
    try:
        services.qa.warm_up()
    except Exception as e:  # the UI still starts and shows the problem on each question
        print(f"warning: {e}", flush=True)
    print(
        f"rlhf-rag-qa: http://{cfg.host}:{cfg.port}  (model {services.qa.registry.current_name()})",
        flush=True,
    )
    launch(services, users=users)
