"""The Gradio chat: layout and events only. Answering lives in app/qa.py, storage in feedback_store/,
feedback handlers in app/ui_feedback.py, what is shown in app/ui_render.py.

Per browser session the UI keeps a `gr.State` dict:
    session_id       random id; the rater session recorded with every piece of feedback
    conversation_id  the chat being shown (saved per user in the store, so it survives a reload)
    history          plain chat turns [{"role", "content": str}] given to the model for follow-ups
    display          the chat messages as shown
    answers          {chat message index: {"interaction_id", "candidate_id"}}: what a thumbs on it rates
    last             the latest interaction: id, question, passages shown, answer, alternatives
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from app.config import AppConfig
from app.limits import RateLimited, RateLimiter
from app.qa import AskResult, QAError, gate_note, plain_history
from app.ranking import TWO_WAY_CHOICES
from app.render import inert_markdown
from app.services import Services
from app.ui_feedback import (
    DOWN_REASONS,
    LABELS,
    PREFER_CHOICES,
    FeedbackHandlers,
    candidate_box,
    err,
    friendly_error,
    ok,
)
from app.ui_render import (
    answer_markdown,
    document_title,
    example_questions,
    sources_markdown,
    start_page_markdown,
)
from feedback_store.records import NewCandidate

log = logging.getLogger(__name__)
_NO_LOGIN_ADMIN = " (this server has no logins: use `ragqa feedback stats`, `ragqa models list` and `ragqa models rollback`)"
MAX_CANDIDATES = 4
LOCAL_OWNER = "local"  # without logins the app listens on this machine only: its one user owns the chats
STOPPED_NOTE = "<sub>(stopped: this partial answer is not saved and cannot be rated)</sub>"
__all__ = ["Handlers", "LABELS", "build_ui", "launch", "new_state", "serve"]


def new_state() -> dict[str, Any]:
    return {
        "session_id": f"web:{uuid.uuid4().hex[:12]}",
        "conversation_id": uuid.uuid4().hex,
        "history": [],
        "display": [],
        "answers": {},
        "last": None,
    }


def chat_value(state: dict[str, Any], pending: str | None = None, question: str | None = None) -> list[dict]:
    shown = [dict(m) for m in state.get("display", [])]
    if question is not None:
        shown.append({"role": "user", "content": inert_markdown(question)})
        shown.append({"role": "assistant", "content": inert_markdown(pending or "") or "…"})
    return shown


def _keep() -> Any:
    """No change to a component (a streamed update must not overwrite what the user types meanwhile)."""
    import gradio as gr

    return gr.update()


def _message_text(message: Any) -> str:
    content = message.get("content") if isinstance(message, dict) else message
    if isinstance(content, list):
        return " ".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content).strip()
    return str(content or "")


# ---- handlers (plain functions: unit-testable without a browser) -------------------------------------
class Handlers(FeedbackHandlers):
    """Event handlers. `user` is the logged-in name (None without logins); feedback is attributed to it."""

    def __init__(self, services: Services, users: Any = None) -> None:
        self.s = services
        self.users = users
        self.limiter = RateLimiter(services.config.rate_limit_per_minute)
        # Per session, the answer in flight: "asking", then "saved" (recorded) or "stopped". Stop and the end of an
        # answer race (Gradio cancels a stream only at its next yield, and the stop handler sees the state as the
        # browser last had it): whichever claims the turn first decides, so a stopped answer is never recorded and
        # an answer already recorded is never reported as "not saved".
        self._turns: dict[str, str] = {}
        self._turns_lock = threading.Lock()

    def _claim_turn(self, session: str, new: str) -> bool:
        """Move the session's answer in flight from "asking" to `new`; False when it had already left "asking"."""
        with self._turns_lock:
            if self._turns.get(session) != "asking":
                return False
            self._turns[session] = new
            return True

    def turn_state(self, session: str) -> str | None:
        with self._turns_lock:
            return self._turns.get(session)

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

    # ---- asking --------------------------------------------------------------------------------------
    def ask(self, question: str, state: dict[str, Any] | None, user: str | None = None) -> Iterator[tuple]:
        """Stream an answer. Yields (chat, sources, model label, status, state, question box, interaction on
        screen). The box is cleared once, when the question is taken: a question typed while the answer
        streams stays in the box (and is asked next when it was sent)."""
        state = state or new_state()
        state.setdefault("display", [])
        state["user"] = user
        box: Any = ""
        try:
            q = self.s.qa.check_question(question)
            self._limit(user, state)
            with self._turns_lock:
                self._turns[state["session_id"]] = "asking"
            pieces: list[str] = []
            sources = sources_markdown([], [], "none")
            busy = "Answering… (■ Stop interrupts it; a question you type now stays in the box: send it when this answer is done)"
            for kind, value in self.s.qa.stream(q, state["history"]):
                if kind == "sources":
                    sources = sources_markdown(value, [], "none")
                    yield chat_value(state, "", q), sources, self.model_label(), busy, state, box, None
                    box = _keep()
                elif kind == "token":
                    pieces.append(value)
                    yield (
                        chat_value(state, "".join(pieces), q),
                        sources,
                        self.model_label(),
                        busy,
                        state,
                        box,
                        None,
                    )
                    box = _keep()
                else:
                    result: AskResult = value
        except (QAError, RateLimited) as e:
            yield (
                chat_value(state),
                sources_markdown([], [], "none"),
                self.model_label(),
                err(str(e)),
                state,
                question,
                None,
            )
            return
        if not self._claim_turn(state["session_id"], "saved"):
            return  # Stop came first: the partial answer it showed stays, and nothing is recorded
        relevance = self._relevance(result.search_query or q, result.passages)
        status = self._record_answer(q, result, state, relevance)
        content = answer_markdown(
            result.answer, result.passages, result.cited, result.citation_mode, relevance, result.finished
        )
        state["display"].append({"role": "user", "content": inert_markdown(q)})
        state["display"].append({"role": "assistant", "content": content})
        index = len(state["display"]) - 1
        if state["last"]:
            state["last"]["index"] = index
            state["answers"][str(index)] = {
                "interaction_id": state["last"]["interaction_id"],
                "candidate_id": state["last"]["answer_id"],
            }
        state["history"] += [{"role": "user", "content": q}, {"role": "assistant", "content": result.answer}]
        self.save_conversation(state, user)
        sources = sources_markdown(result.passages, result.cited, result.citation_mode, relevance)
        label = f"Model: **{result.model_version}** · {result.backend}"
        fallback = self.s.qa.generator.fallback_reason
        if fallback:
            label += f" ({inert_markdown(fallback)})"
        shown = state["last"]["interaction_id"] if state["last"] else None
        yield chat_value(state), sources, label, status, state, box, shown

    def _relevance(self, question: str, passages: list[Any]) -> dict[int, float]:
        from app.relevance import passage_relevance

        try:
            return passage_relevance(self.s.qa.embedder(), question, passages)
        except Exception:  # a relevance we cannot show is no reason to lose the answer
            log.exception("computing the passages' relevance failed")
            return {}

    def _record_answer(
        self, question: str, result: AskResult, state: dict[str, Any], relevance: dict[int, float]
    ) -> str:
        # The turns the model saw: plain_history drops empty answers, which the store would refuse as context.
        context = plain_history(state["history"])
        gate = result.generation.get("relevance_gate")
        candidate = NewCandidate(
            text=result.answer,
            model_version=result.model_version,
            # a gated answer is the gate's, not a greedy decode: the record says so
            sampling={"relevance_gate": gate}
            if gate
            else {"do_sample": False, "max_new_tokens": self.s.config.max_new_tokens},
            latency_ms=result.timings_ms["total"],
            label="answer",
        )
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
            return err(f"answered, but {friendly_error('feedback on this answer', e)[2:]}: rating it is off")
        state["last"] = {
            "interaction_id": ids.interaction_id,
            "question": question,
            "context": context,
            "passages": result.passages,
            "answer_id": ids.candidate_ids[0],
            "answer_text": result.answer,
            "cited": result.cited,
            "citation_mode": result.citation_mode,
            "relevance": relevance,
            "alternatives": {},
            "compare": None,
        }
        note = gate_note(result, "press Regenerate to let the model answer anyway")
        if note:
            return note
        t = result.timings_ms
        rate = result.generation.get("decode_tokens_per_s")
        speed = f", {rate:.0f} tokens/s" if rate else ""
        return f"Answered in {t['total'] / 1000:.1f} s (first token {t['first_token'] / 1000:.1f} s{speed})."

    def stop(self, chat: list[Any] | None, state: dict[str, Any]) -> tuple[list[dict], str, dict[str, Any]]:
        """After Stop: keep the partial answer on screen, marked as not saved (it never reached the store)."""
        shown = list(chat or [])
        display = state.setdefault("display", [])
        if not self._claim_turn(state["session_id"], "stopped") or len(shown) < len(display) + 2:
            return chat_value(state), "Nothing to stop.", state
        question, partial = shown[len(display)], shown[len(display) + 1]
        display.append({"role": "user", "content": _message_text(question)})
        text = _message_text(partial).strip()
        display.append(
            {"role": "assistant", "content": (text + "\n\n" if text and text != "…" else "") + STOPPED_NOTE}
        )
        return chat_value(state), "Stopped. The partial answer is not saved.", state

    # ---- conversations -------------------------------------------------------------------------------
    def new_chat(self, state: dict[str, Any] | None) -> dict[str, Any]:
        """Start a new conversation: nothing of the old one reaches the next prompt, search or feedback."""
        fresh = new_state()
        state = state if state is not None else fresh
        session = state.get("session_id") or fresh["session_id"]
        state.clear()
        state.update(fresh, session_id=session)
        return state

    @staticmethod
    def _owner(user: str | None) -> str:
        return user or LOCAL_OWNER

    def save_conversation(self, state: dict[str, Any], user: str | None) -> None:
        first = next((m["content"] for m in state.get("history", []) if m["role"] == "user"), None)
        if not first:
            return
        try:
            self.s.store.save_conversation(
                state["conversation_id"],
                self._owner(user),
                first[:80],
                {"display": state["display"], "history": state["history"], "answers": state["answers"]},
            )
        except Exception:  # the chat still works; it will just not come back after a reload
            log.exception("saving the conversation failed")

    def conversations(self, user: str | None = None) -> list[tuple[str, str, str]]:
        try:
            return self.s.store.list_conversations(self._owner(user))
        except Exception:
            log.exception("listing the conversations failed")
            return []

    def open_conversation(
        self, conversation_id: str | None, state: dict[str, Any], user: str | None = None
    ) -> str:
        saved = (
            self.s.store.load_conversation(conversation_id, self._owner(user)) if conversation_id else None
        )
        if saved is None:
            return err("that conversation was not found")
        self.new_chat(state)
        state.update(
            conversation_id=conversation_id,
            display=list(saved.get("display", [])),
            history=list(saved.get("history", [])),
            answers=dict(saved.get("answers", {})),
        )
        return ok("conversation opened: ask a follow-up or rate its answers.")

    # ---- the start page ------------------------------------------------------------------------------
    def documents(self) -> list[tuple[str, str]]:
        """(source, title) of every indexed document; [] when nothing is indexed yet."""
        try:
            index = self.s.qa.retriever().index
        except Exception:
            return []
        first: dict[str, str] = {}
        for chunk in index.chunks:
            if chunk.position == 0:
                first.setdefault(chunk.source, chunk.text)
        return [(src, document_title(src, first.get(src, ""))) for src in sorted(index.files)]

    def add_documents(self, files: list[Any] | None, user: str | None = None) -> str:
        """Admins add documents: each upload (Gradio's own upload, limited to the supported file types) is
        ingested as one file, added or updated under its file name; the other indexed documents stay."""
        if not self.is_admin(user):
            return err("only admins can add documents")
        paths = [Path(f if isinstance(f, str) else getattr(f, "name", "")) for f in (files or [])]
        if not paths:
            return err("choose one or more files first")
        from retrieval.ingest import ingest

        lines = []
        for path in paths:
            try:
                report = ingest(
                    path,
                    self.s.config.paths.index_dir,
                    self.s.qa.embedder(),
                    progress=False,
                    **self.s.config.ingest_options(),
                )
            except Exception as e:
                return err(f"{path.name} could not be added: {e}")
            lines.append(f"{path.name}: {report.summary().splitlines()[0]}")
            lines += [f"skipped {rel}: {why}" for rel, why in report.skipped]
        return ok("added. " + " · ".join(lines))

    def stats(self, user: str | None = None) -> str:
        if not self.is_admin(user):
            return err(
                f"only admins can see the feedback counts{_NO_LOGIN_ADMIN if self.users is None else ''}"
            )
        try:
            st = self.s.store.stats()
        except Exception as e:
            return err(f"feedback store unavailable: {e}")
        return stats_markdown(st)

    def versions(self, user: str | None = None) -> str:
        if not self.is_admin(user):
            return err(f"only admins can see model versions{_NO_LOGIN_ADMIN if self.users is None else ''}")
        current = self.s.qa.registry.current_name()
        rows = [
            f"| {'**' + v.name + '** (current)' if v.name == current else v.name} | {v.created_at} | "
            f"{v.manifest.get('parent') or '-'} | {inert_markdown(str(v.manifest.get('kind', '')))} |"
            for v in self.s.qa.registry.versions()
        ]
        return "| version | created | parent | kind |\n|---|---|---|---|\n" + "\n".join(rows)

    def rollback(self, version: str | None, user: str | None = None) -> str:
        if not self.is_admin(user):
            return err(
                f"only admins can switch model versions{_NO_LOGIN_ADMIN if self.users is None else ''}"
            )
        from model_store.registry import RegistryError

        try:
            v = self.s.qa.registry.rollback((version or "").strip() or None)
        except RegistryError as e:
            return err(str(e))
        return ok(f"current is now {v.name}; the next answer uses it")


def stats_markdown(st: dict[str, Any]) -> str:
    rows = [f"| {k} | {v} |" for k, v in st.items() if not isinstance(v, dict | list)]
    out = "| what | count |\n|---|---|\n" + "\n".join(rows)
    per_version = st.get("per_model_version") or st.get("by_model_version")
    if isinstance(per_version, dict) and per_version:
        out += "\n\n**Per model version**\n\n| version | counts |\n|---|---|\n"
        out += "\n".join(f"| {v} | {inert_markdown(str(c))} |" for v, c in per_version.items())
    return out


def _toast(msg: str) -> str:
    """Show a result as a toast beside the work (gr.Info / gr.Warning) and return it for the status line."""
    import gradio as gr

    # Short-lived: a confirmation that lingers covers the sources of the next answer.
    if msg.startswith("⚠️"):
        gr.Warning(msg.removeprefix("⚠️").strip(), duration=6)
    elif msg.startswith("✅"):
        gr.Info(msg.removeprefix("✅").strip(), duration=3)
    return msg


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


def _like_handler(h: Handlers) -> Any:
    """The chat's like event: rate, or withdraw on deselect; a 👎 opens the reasons panel for that message.

    Gradio passes gr.LikeData only to a parameter whose type hint says so, and the hint must resolve at run
    time (this module's annotations are strings and gradio is imported lazily)."""
    import gradio as gr

    def on_like(evt: Any, state: dict[str, Any], request: Any = None) -> tuple:
        msg = _toast(h.like(evt.index, evt.liked, state, user=_username(request)))
        key = str(evt.index[0] if isinstance(evt.index, list | tuple) else evt.index)
        down = evt.liked is False and msg.startswith("✅")
        target = state.get("answers", {}).get(key) if down else None
        return msg, gr.update(visible=down), target, [], ""

    on_like.__annotations__ = {"evt": gr.LikeData, "state": dict, "request": gr.Request, "return": tuple}
    return on_like


# ---- layout ------------------------------------------------------------------------------------------
def build_ui(services: Services, users: Any = None) -> Any:  # noqa: PLR0915 (one flat layout reads best)
    import gradio as gr

    from retrieval.documents import SUPPORTED_SUFFIXES

    h = Handlers(services, users)
    docs = h.documents()
    with gr.Blocks(title="rlhf-rag-qa") as demo:
        state = gr.State(new_state)
        on_screen = gr.State(None)  # the interaction the feedback panels were filled for
        down_target = gr.State(None)  # the message the 👎 reasons panel is about
        with gr.Row():
            gr.Markdown("## rlhf-rag-qa — ask your documents")
            model_md = gr.Markdown(h.model_label())
        with gr.Row():
            with gr.Column(scale=1, min_width=200):
                new_btn = gr.Button("➕ New chat", size="sm")
                chats = gr.Dropdown(choices=[], label="Your chats", interactive=True)
            with gr.Column(scale=5):
                chat = gr.Chatbot(
                    label="Chat",
                    height=460,
                    sanitize_html=True,
                    placeholder=start_page_markdown(docs),
                    feedback_options=("Like", "Dislike"),
                )
                with gr.Row():
                    question = gr.Textbox(
                        placeholder="Ask a question about your documents…", show_label=False, scale=6
                    )
                    send = gr.Button("Ask", variant="primary", scale=1, min_width=80)
                    stop_btn = gr.Button("■ Stop", variant="stop", scale=1, min_width=80)
                    regen_btn = gr.Button("🔄 Regenerate", scale=1, min_width=120)
                examples = example_questions([t for _s, t in docs])
                if examples:
                    gr.Examples([[q] for q in examples], inputs=[question], label="Try")
                status = gr.Markdown("")
                with gr.Group(visible=False) as down_group:
                    gr.Markdown("**What was wrong with this answer?**")
                    down_tags = gr.CheckboxGroup(list(DOWN_REASONS), show_label=False)
                    down_comment = gr.Textbox(placeholder="Tell us more (optional)", show_label=False)
                    down_btn = gr.Button("Send feedback", size="sm")
                with gr.Group(visible=False) as compare_group:
                    gr.Markdown("### Which response do you prefer?")
                    with gr.Row():
                        with gr.Column():
                            gr.Markdown("**Response 1** (the answer you read)")
                            cmp1 = gr.Markdown(sanitize_html=True)
                        with gr.Column():
                            gr.Markdown("**Response 2** (new)")
                            cmp2 = gr.Markdown(sanitize_html=True)
                    prefer = gr.Radio(list(PREFER_CHOICES), show_label=False)
                    prefer_btn = gr.Button("Save my choice", variant="primary", size="sm")
            with gr.Column(scale=2):
                gr.Markdown("### Sources")
                sources = gr.Markdown("_No sources yet._", sanitize_html=True)
        with gr.Accordion("Compare more alternatives and rank them", open=False):
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
        with gr.Accordion("Admin: feedback, model versions, documents", open=False, visible=False) as admin:
            stats_md = gr.Markdown("")
            stats_btn = gr.Button("Refresh counts")
            versions_md = gr.Markdown("")
            with gr.Row():
                version_box = gr.Textbox(
                    placeholder="v0001 (empty: the current version's parent)", show_label=False
                )
                rollback_btn = gr.Button("Roll back / switch")
            uploads = gr.File(
                label="Add documents",
                file_count="multiple",
                file_types=sorted(SUPPORTED_SUFFIXES),
                type="filepath",
            )
            upload_btn = gr.Button("Add to the index")
            admin_status = gr.Markdown("")

        # Every feedback panel, emptied when a new question is sent, New chat is pressed or a chat is opened.
        panels = [*boxes, rank_group, choice, order, correction, compare_group, prefer, cmp1, cmp2]
        panels += [down_group, down_tags, down_comment, down_target]

        def reset_panels() -> tuple:
            hidden = gr.update(value=None, visible=False)
            return (
                *[hidden] * MAX_CANDIDATES,
                gr.update(visible=False),
                None,
                "",
                "",
                gr.update(visible=False),
                None,
                "",
                "",
                gr.update(visible=False),
                [],
                "",
                None,
            )

        def keep_panels() -> tuple:
            """Leave the panels as they are (what the user types while an answer streams survives)."""
            return (*[gr.update()] * (len(panels) - 1), None)

        def chat_list(user: str | None = None) -> Any:
            return gr.update(choices=[(title, cid) for cid, title, _at in h.conversations(user)], value=None)

        def ask_and_reset(q: str, s: dict, user: str | None = None) -> Iterator[tuple]:
            """The answer's updates; the first one also empties every feedback panel (in the same update, so
            no panel of the previous answer can outlive it)."""
            first = True
            for update in h.ask(q, s, user):
                yield (*update, *(reset_panels() if first else keep_panels()))
                first = False

        outputs = [chat, sources, model_md, status, state, question, on_screen, *panels]
        ask = _as_user(ask_and_reset, 2, generator=True)
        # While an answer streams, a second send is ignored by Gradio ("once"), but the box is not cleared by the
        # stream any more and the status line says so: the typed question waits there for the user to send it.
        # ("always_last" would queue it, but measured in Chromium it also re-ran a question after Stop.)
        ask_events = [
            question.submit(ask, [question, state], outputs, api_name=False),
            send.click(ask, [question, state], outputs, api_name=False),
        ]
        # The HTTP API keeps its shape (chat, sources, model, status, question box) through invisible triggers;
        # rate_up / rate_down rate the latest answer with a reason (the chat rates any answer with 👍/👎).
        api_ask, api_up, api_down = (gr.Button(visible=False) for _ in range(3))
        api_reason = gr.Textbox(visible=False)
        api_outputs = [chat, sources, model_md, status, state, question, on_screen]
        api_ask.click(_as_user(h.ask, 2, generator=True), [question, state], api_outputs, api_name="ask")

        def rate_up(r: str, s: dict, user: str | None = None) -> str:
            return h.rate_latest(True, r, s, user)

        def rate_down(r: str, s: dict, user: str | None = None) -> str:
            return h.rate_latest(False, r, s, user)

        api_up.click(_as_user(rate_up, 2), [api_reason, state], [status], api_name="rate_up")
        api_down.click(_as_user(rate_down, 2), [api_reason, state], [status], api_name="rate_down")
        for event in ask_events:
            event.then(_as_user(chat_list, 0), None, [chats], api_name=False)

        def on_stop(value: list, s: dict) -> tuple:
            if h.turn_state(s["session_id"]) == "saved":  # the answer ended (and was recorded) before Stop
                return gr.skip(), "The answer had already finished; it is saved.", gr.skip()
            shown, msg, s = h.stop(value, s)
            return shown, _toast(ok(msg)) if msg.startswith("Stopped") else msg, s

        # Cancel first, then mark the partial answer: with both in one event, an update the cancelled stream had
        # already sent could land after Stop's and leave "Answering…" and the unmarked partial answer on screen
        # (seen in Chromium with the real model, Stop clicked a second or more into the answer).
        stop_btn.click(None, None, None, cancels=ask_events, queue=False).then(
            on_stop, [chat, state], [chat, status, state], api_name="stop"
        )

        def on_new_chat(s: dict, user: str | None = None) -> tuple:
            h.new_chat(s)
            return ([], "_No sources yet._", "New chat.", s, chat_list(user), None, *reset_panels())

        new_outputs = [chat, sources, status, state, chats, on_screen, *panels]
        new_btn.click(_as_user(on_new_chat, 1), [state], new_outputs, cancels=ask_events, api_name="new_chat")
        chat.clear(_as_user(on_new_chat, 1), [state], new_outputs, cancels=ask_events, api_name=False)

        def on_open(conv_id: str, s: dict, user: str | None = None) -> tuple:
            msg = _toast(h.open_conversation(conv_id, s, user))
            return (chat_value(s), "_No sources yet._", msg, s, None, *reset_panels())

        chats.input(
            _as_user(on_open, 2),
            [chats, state],
            [chat, sources, status, state, on_screen, *panels],
            api_name=False,
        )

        def on_regenerate(s: dict, user: str | None = None) -> tuple:
            original, new, msg = h.regenerate(s, user)
            if not original:
                return gr.update(), "", "", None, _toast(msg)
            return gr.update(visible=True), original, new, None, msg

        regen_outputs = [compare_group, cmp1, cmp2, prefer, status]
        regen_btn.click(_as_user(on_regenerate, 1), [state], regen_outputs, api_name="regenerate")
        chat.retry(_as_user(on_regenerate, 1), [state], regen_outputs, api_name=False)

        def on_prefer(c: str, shown: Any, s: dict, user: str | None = None) -> tuple:
            msg = _toast(h.prefer(c, shown, s, user))
            return chat_value(s), msg, s

        prefer_btn.click(
            _as_user(on_prefer, 3), [prefer, on_screen, state], [chat, status, state], api_name="prefer"
        )

        chat.like(
            _like_handler(h),
            [state],
            [status, down_group, down_target, down_tags, down_comment],
            api_name=False,
        )

        def on_explain(tags: list, comment: str, target: Any, s: dict, user: str | None = None) -> tuple:
            msg = _toast(h.explain_down(tags, comment, target, s, user))
            return msg, gr.update(visible=not msg.startswith("✅"))

        down_btn.click(
            _as_user(on_explain, 4),
            [down_tags, down_comment, down_target, state],
            [status, down_group],
            api_name="explain_down",
        )

        def on_alternatives(n: int, s: dict, user: str | None = None) -> tuple:
            texts, msg = h.alternatives(n, s, user)
            boxes_out = [
                gr.update(value=candidate_box(LABELS[i], t), visible=True) for i, t in enumerate(texts)
            ]
            boxes_out += [gr.update(value=None, visible=False)] * (MAX_CANDIDATES - len(texts))
            return (*boxes_out, gr.update(visible=bool(texts)), msg if texts else _toast(msg), s)

        alt_btn.click(
            _as_user(on_alternatives, 2),
            [n_alt, state],
            [*boxes, rank_group, status, state],
            api_name="alternatives",
        )

        def on_rank(c: str, o: str, shown: Any, s: dict, user: str | None = None) -> str:
            return _toast(h.rank(c, o, shown, s, user))

        rank_btn.click(_as_user(on_rank, 4), [choice, order, on_screen, state], [status], api_name="rank")

        def on_correct(text: str, shown: Any, s: dict, user: str | None = None) -> str:
            return _toast(h.correct(text, shown, s, user))

        correct_btn.click(
            _as_user(on_correct, 3), [correction, on_screen, state], [status], api_name="correct"
        )
        stats_btn.click(_as_user(h.stats, 0), None, [stats_md], api_name="stats")
        stats_btn.click(_as_user(h.versions, 0), None, [versions_md], api_name="versions")
        rollback_btn.click(_as_user(h.rollback, 1), [version_box], [admin_status], api_name="rollback")

        def on_upload(files: list, user: str | None = None) -> tuple:
            msg = _toast(h.add_documents(files, user))
            return msg, gr.update(placeholder=start_page_markdown(h.documents()))

        upload_btn.click(_as_user(on_upload, 1), [uploads], [admin_status, chat], api_name="add_documents")

        def on_load(user: str | None = None) -> tuple:
            return h.model_label(), gr.update(visible=h.is_admin(user)), chat_list(user)

        demo.load(_as_user(on_load, 0), None, [model_md, admin, chats], api_name=False)
    return demo


# A table in an opened passage (app.ui_render.passage_body): the chat's narrow bubble otherwise breaks the first
# column's setting names mid-word ("max_new_tok / ens"); the last column wraps instead.
PAGE_CSS = """
.source-table { font-size: 0.9em; }
.source-table td:first-child, .source-table th:first-child { white-space: nowrap; }
"""


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
        css=PAGE_CSS,
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
