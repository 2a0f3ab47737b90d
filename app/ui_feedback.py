"""The chat's feedback handlers: thumbs (and taking them back), reasons, regenerate-and-choose, rankings, corrections.

Every piece of feedback names what it was given for, and the server checks it against what the session shows:
  - a thumbs on a chat message is looked up by the message's index in THIS conversation (state["answers"]:
    index -> interaction id + candidate id); a message of a conversation no longer shown finds nothing;
  - the ranking, regenerate and "better answer" panels send the interaction id they were filled for (a hidden
    field set with each answer); feedback for an interaction other than the latest one on screen is refused.
Ratings are rows, never updates: un-liking stores a withdrawal, a revised ranking a new ranking; the export
counts the latest of each rater session. Plain functions on a state dict: unit-testable without a browser.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from typing import Any

from app.limits import RateLimited
from app.qa import QAError
from app.ranking import RankingError, parse_order, two_way
from app.render import inert_markdown
from app.ui_render import answer_markdown

log = logging.getLogger(__name__)
LABELS = ["A", "B", "C", "D"]
# The regenerate comparison's choices, and what they mean as a two-way ranking (A = the original answer).
PREFER_CHOICES = {
    "Response 1": "A is better",
    "Response 2": "B is better",
    "Both are good": "Tie",
    "Both are bad": "Both bad",
}
DOWN_REASONS = (
    "Not in the sources",
    "Wrong facts",
    "Did not answer the question",
    "Wrong or missing citation",
    "Too long or rambling",
    "Other",
)
STALE = "that panel belongs to an earlier answer; a newer answer is on screen. Nothing was saved"


def ok(msg: str) -> str:
    return f"✅ {msg}"


def err(msg: str) -> str:
    return f"⚠️ {msg}"


def friendly_error(action: str, e: BaseException) -> str:
    """An error as a user can act on it; the details go to the log, not the screen."""
    from feedback_store.errors import FeedbackStoreUnavailable, FeedbackValidationError

    if isinstance(e, QAError | RateLimited | RankingError):
        return err(str(e))
    if isinstance(e, FeedbackValidationError):
        return err(f"{action} was NOT saved: {e}")
    log.error("%s failed: %s", action, e, exc_info=e)
    if isinstance(e, FeedbackStoreUnavailable):
        return err(
            f"{action} was NOT saved: the feedback store is busy or unavailable; try again in a moment"
        )
    return err(f"{action} was NOT saved because of an internal error (logged); try again")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _as_id(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


class FeedbackHandlers:
    """Mixed into app.ui.Handlers, which provides `s` (Services), `_limit` and `save_conversation`."""

    s: Any

    def _limit(self, user: str | None, state: dict[str, Any]) -> None:  # provided by Handlers
        raise NotImplementedError

    def save_conversation(self, state: dict[str, Any], user: str | None) -> None:  # provided by Handlers
        raise NotImplementedError

    # ---- what is on screen ---------------------------------------------------------------------------
    @staticmethod
    def on_screen(shown: Any, state: dict[str, Any] | None) -> dict[str, Any] | str:
        """The latest interaction if `shown` (what the panel was filled for) is it; else the refusal text."""
        last = (state or {}).get("last")
        if not last:
            return err("ask a question first")
        if _as_id(shown) != last["interaction_id"]:
            return err(STALE)
        return last

    # ---- thumbs --------------------------------------------------------------------------------------
    def like(self, index: Any, liked: Any, state: dict[str, Any], user: str | None = None) -> str:
        """The chat's 👍/👎 on message `index`: True, False, or ""/None when the user deselects (withdraw)."""
        key = str(index[0] if isinstance(index, list | tuple) else index)
        target = (state or {}).get("answers", {}).get(key)
        if not target:
            if key.isdigit() and int(key) == len((state or {}).get("display", [])) + 1:
                # Gradio shows the thumbs under an answer while it is still being written; it is recorded (and can
                # be rated) only when it is done.
                return err(
                    "this answer is still being written: rate it when it is done (this click was not saved)"
                )
            return err("only answers of this conversation can be rated")
        cid = int(target["candidate_id"])
        try:
            if liked is True or liked is False:
                self.s.store.record_rating(
                    cid,
                    liked,
                    session_id=state["session_id"],
                    user=user,
                    client_token=f"rate:{uuid.uuid4().hex}",
                )
            else:
                self.s.store.withdraw_rating(
                    cid, session_id=state["session_id"], user=user, client_token=f"rate:{uuid.uuid4().hex}"
                )
        except Exception as e:
            return friendly_error("your rating", e)
        if liked is True:
            return ok("👍 saved. Thank you!")
        if liked is False:
            return ok("👎 saved. What was wrong? Tell us below (optional).")
        return ok("rating withdrawn.")

    def rate_latest(
        self, up: bool, reason: str | None, state: dict[str, Any], user: str | None = None
    ) -> str:
        """API clients: rate the latest answer with an optional reason (the chat itself uses `like`)."""
        last = (state or {}).get("last")
        if not last:
            return err("there is no recorded answer to rate yet")
        cid, reason = last["answer_id"], (reason or "").strip() or None
        try:
            rid = self.s.store.record_rating(
                cid,
                bool(up),
                reason=reason,
                session_id=state["session_id"],
                user=user,
                # A digest, not the text: a token holding a long reason broke the 200-character identifier limit.
                # The same submission twice (a retried request) records once.
                client_token=f"rate:{cid}:{int(bool(up))}:{_digest(reason or '')}",
            )
        except Exception as e:
            return friendly_error("the rating", e)
        return ok(f"{'👍' if up else '👎'} saved (#{rid}).")

    def explain_down(
        self,
        tags: list[str] | None,
        comment: str | None,
        target: Any,
        state: dict[str, Any],
        user: str | None = None,
    ) -> str:
        """Reasons and a comment for a 👎, stored as the rater's latest rating of that answer."""
        target = target if isinstance(target, dict) else {}
        if not target or target not in (state or {}).get("answers", {}).values():
            return err("that answer is no longer on screen; nothing was saved")
        reason = ", ".join(t for t in (tags or []) if t) or None
        note = (comment or "").strip() or None
        if not reason and not note:
            return err("choose a reason or write a comment first")
        try:
            self.s.store.record_rating(
                int(target["candidate_id"]),
                False,
                reason=reason,
                comment=note,
                session_id=state["session_id"],
                user=user,
                client_token=f"rate:{uuid.uuid4().hex}",
            )
        except Exception as e:
            return friendly_error("your feedback", e)
        return ok("thank you: your 👎 and its reasons are saved.")

    # ---- comparing answers ---------------------------------------------------------------------------
    def alternatives(self, n: int, state: dict[str, Any], user: str | None = None) -> tuple[list[str], str]:
        """Sample n new answers for the latest question and passages; returns (their texts, status)."""
        last = (state or {}).get("last")
        if not last:
            return [], err("ask a question first")
        n = int(n or self.s.config.num_candidates)
        try:
            self._limit(user, state)
            cands = self.s.qa.candidates(last["question"], last["passages"], last["context"], n=n)
            records = [c.to_record(label=LABELS[i]) for i, c in enumerate(cands)]
            ids = self.s.store.add_candidates(last["interaction_id"], records)
        except Exception as e:
            return [], friendly_error("the alternatives", e)
        last["alternatives"] = dict(zip(LABELS, ids, strict=False))
        last["compare"] = "alternatives"
        last["texts"] = {cid: c.text for cid, c in zip(ids, cands, strict=True)}
        return [c.text for c in cands], f"{len(cands)} alternatives: rank them below."

    def regenerate(self, state: dict[str, Any], user: str | None = None) -> tuple[str, str, str]:
        """A new answer for the latest question, shown beside the one the user read: (original, new, status)."""
        last = (state or {}).get("last")
        if not last:
            return "", "", err("ask a question first")
        try:
            self._limit(user, state)
            (cand,) = self.s.qa.candidates(last["question"], last["passages"], last["context"], n=1)
            (cid,) = self.s.store.add_candidates(
                last["interaction_id"], [cand.to_record(label="regenerated")]
            )
        except Exception as e:
            return "", "", friendly_error("the new answer", e)
        last["alternatives"] = {"A": last["answer_id"], "B": cid}
        last["compare"] = "regenerate"
        last.setdefault("texts", {})[cid] = cand.text
        last["texts"][last["answer_id"]] = last["answer_text"]
        last["regenerated"] = {"text": cand.text, "cited": cand.cited}
        original = answer_markdown(
            last["answer_text"], last["passages"], last["cited"], last["citation_mode"], last["relevance"]
        )
        new = answer_markdown(cand.text, last["passages"], cand.cited, "model", last["relevance"])
        return original, new, "A new answer is ready: compare it with the one you read, below."

    def rank(
        self,
        choice: str | None,
        order_text: str | None,
        shown: Any,
        state: dict[str, Any],
        user: str | None = None,
    ) -> str:
        """Save the ranking of the alternatives on screen; saving again stores a revision (the latest counts)."""
        last = self.on_screen(shown, state)
        if isinstance(last, str):
            return last
        alts: dict[str, int] = last.get("alternatives") or {}
        if not alts or last.get("compare") != "alternatives":
            return err("get alternatives first")
        try:
            if len(alts) == 2:
                groups, both_bad = two_way(choice or "")
            else:
                groups, both_bad = parse_order(order_text or "", list(alts)), False
        except RankingError as e:
            return err(str(e))
        return self._save_ranking(last, groups, both_bad, state, user, "ranking")

    def prefer(self, choice: str | None, shown: Any, state: dict[str, Any], user: str | None = None) -> str:
        """The regenerate comparison's answer; the preferred response becomes the chat's answer."""
        last = self.on_screen(shown, state)
        if isinstance(last, str):
            return last
        if last.get("compare") != "regenerate":
            return err("regenerate the answer first")
        if choice not in PREFER_CHOICES:
            return err(f"choose one of: {', '.join(PREFER_CHOICES)}")
        groups, both_bad = two_way(PREFER_CHOICES[choice])
        status = self._save_ranking(last, groups, both_bad, state, user, "choice")
        if status.startswith("✅"):
            self._show_preferred(last, state, new=choice == "Response 2")
            self.save_conversation(state, user)
        return status

    def _save_ranking(
        self,
        last: dict[str, Any],
        groups: list[list[str]],
        both_bad: bool,
        state: dict[str, Any],
        user: str | None,
        noun: str,
    ) -> str:
        alts: dict[str, int] = last["alternatives"]
        # "Both bad" names the candidates it judged, so the export can give each a `label: false` row.
        order = [list(alts.values())] if both_bad else [[alts[label] for label in g] for g in groups]
        revision = bool(last.get("ranked"))
        try:
            rid = self.s.store.record_ranking(
                last["interaction_id"],
                order,
                both_bad=both_bad,
                session_id=state["session_id"],
                user=user,
                client_token=f"rank:{uuid.uuid4().hex}",  # every save is a new row: a revision, not a replay
            )
        except Exception as e:
            return friendly_error(f"your {noun}", e)
        last["ranked"] = True
        if revision:
            return ok(f"{noun} saved (#{rid}): it replaces your earlier one.")
        return ok(f"{noun} saved (#{rid}). Thank you!")

    def _show_preferred(self, last: dict[str, Any], state: dict[str, Any], new: bool) -> None:
        """Show the preferred response as the chat's answer; a thumbs on it then rates that candidate."""
        cid = last["alternatives"]["B" if new else "A"]
        text = last["texts"][cid]
        cited = last["regenerated"]["cited"] if new else last["cited"]
        mode = "model" if new else last["citation_mode"]
        index = last["index"]
        state["display"][index] = {
            "role": "assistant",
            "content": answer_markdown(text, last["passages"], cited, mode, last["relevance"]),
        }
        state["answers"][str(index)] = {"interaction_id": last["interaction_id"], "candidate_id": cid}
        if state["history"] and state["history"][-1]["role"] == "assistant":
            state["history"][-1]["content"] = text  # the next question's context is the answer kept

    # ---- a better answer -----------------------------------------------------------------------------
    def correct(self, text: str, shown: Any, state: dict[str, Any], user: str | None = None) -> str:
        last = self.on_screen(shown, state)
        if isinstance(last, str):
            return last
        if not (text or "").strip():
            return err("write your answer in the box first")
        replaces = [last["answer_id"], *last.get("alternatives", {}).values()]
        replaces = list(dict.fromkeys(replaces))
        try:
            cid = self.s.store.record_correction(
                last["interaction_id"],
                text,
                replaces=replaces,
                session_id=state["session_id"],
                user=user,
                client_token=f"correct:{last['interaction_id']}:{uuid.uuid5(uuid.NAMESPACE_OID, text)}",
            )
        except Exception as e:
            return friendly_error("your answer", e)
        return ok(f"your answer is saved as an example of a good answer (#{cid}).")


def candidate_box(label: str, text: str) -> str:
    return f"**{label}**\n\n{inert_markdown(text) or '_(empty)_'}"
