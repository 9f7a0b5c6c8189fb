"""Workloads: named traffic presets and JSONL request files, built from real text with a seed.

A workload is a list of :class:`Session`. A session is a list of :class:`Turn` run one after the
other on one connection slot; every turn's prompt is the session's shared prefix, then the whole
history (earlier user turns and the model's actual replies), then the new user text. Single-turn
workloads (chat, rag, burst-decode) are sessions of one turn.

Presets (token counts are targets; the real count comes back in the server's ``usage``):

=====================  ==========================================================================
chat                   short prompts (~64-192 tokens) and short answers (~32-128 tokens)
long-context-agent     multi-turn sessions: a shared system prefix plus tool/observation turns;
                       the history grows every turn (prefix caching and KV growth)
rag                    long prompts (~1-3K tokens of retrieved text), short answers (~32-64)
burst-decode           short prompts, long fixed outputs (ignore_eos), everything at once:
                       the KV-memory-bound regime KVarN targets
long-prompt            very long documents (~16-32K tokens) and short answers: prefill in chunks of
                       max_num_batched_tokens, each later chunk attending to the cached earlier ones
file:PATH              a JSONL file, one request per line: {"prompt": str, "max_tokens": int,
                       optional "session": id, "ignore_eos": bool}; lines with the same session
                       id are the turns of one session, in file order
=====================  ==========================================================================

``scale`` multiplies every preset length (the CPU default uses a small scale so a run takes
minutes); ``num_sessions`` sets how many sessions each load level replays.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

PRESET_NAMES = ("chat", "long-context-agent", "rag", "burst-decode", "long-prompt")

_FALLBACK_TEXT = [
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
    "want of a wife. However little known the feelings or views of such a man may be on his first entering a "
    "neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is considered "
    "the rightful property of some one or other of their daughters.",
    "The family of Dashwood had long been settled in Sussex. Their estate was large, and their residence was at "
    "Norland Park, in the centre of their property, where, for many generations, they had lived in so "
    "respectable a manner as to engage the general good opinion of their surrounding acquaintance.",
    "Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy disposition, seemed to unite "
    "some of the best blessings of existence; and had lived nearly twenty-one years in the world with very "
    "little to distress or vex her.",
    "No one who had ever seen Catherine Morland in her infancy would have supposed her born to be an heroine. "
    "Her situation in life, the character of her father and mother, her own person and disposition, were all "
    "equally against her.",
    "Sir Walter Elliot, of Kellynch Hall, in Somersetshire, was a man who, for his own amusement, never took up "
    "any book but the Baronetage; there he found occupation for an idle hour, and consolation in a distressed one.",
    "About thirty years ago Miss Maria Ward, of Huntingdon, with only seven thousand pounds, had the good luck "
    "to captivate Sir Thomas Bertram, of Mansfield Park, in the county of Northampton, and to be thereby raised "
    "to the rank of a baronet's lady, with all the comforts and consequences of an handsome house and large income.",
]


@dataclass
class Turn:
    """One request of a session: new user text appended to the session's history."""

    user_text: str
    max_tokens: int
    ignore_eos: bool = False


@dataclass
class Session:
    """Turns that run sequentially; ``prefix`` is shared by every turn (and often across sessions)."""

    turns: list[Turn]
    prefix: str = ""
    session_id: str = ""


@dataclass
class Workload:
    name: str
    sessions: list[Session]
    description: str = ""
    params: dict = field(default_factory=dict)

    @property
    def num_requests(self) -> int:
        return sum(len(s.turns) for s in self.sessions)

    def summary(self) -> dict:
        """JSON-ready description (the result's ``workload`` object)."""
        outs = [t.max_tokens for s in self.sessions for t in s.turns]
        return {
            "name": self.name,
            "description": self.description,
            "num_sessions": len(self.sessions),
            "num_requests": self.num_requests,
            "max_tokens_total": sum(outs),
            **self.params,
        }


# ---- text and token-length control ------------------------------------------------------------
def load_paragraphs() -> list[str]:
    """Austen paragraphs from :mod:`kvarn.assets` when it is installed, else a built-in excerpt."""
    try:
        from kvarn.assets import austen_paragraphs  # type: ignore

        paras = [p for p in austen_paragraphs() if len(p.split()) >= 20]
        if paras:
            return paras
    except Exception:  # noqa: BLE001 - any failure -> built-in text
        pass
    return list(_FALLBACK_TEXT)


class TextSource:
    """Cuts prompts of a target token length out of real text, reproducibly from a seed.

    ``count_tokens(text) -> int`` is the model tokenizer when available; otherwise words * 1.3.
    """

    def __init__(self, paragraphs: list[str], count_tokens: Callable[[str], int] | None = None):
        words: list[str] = []
        for p in paragraphs:
            words.extend(p.split())
        if not words:
            raise ValueError("TextSource needs non-empty text")
        self.words = words
        self.count_tokens = count_tokens or (lambda s: int(round(len(s.split()) * 1.3)))

    def take(self, rng: random.Random, n_tokens: int) -> str:
        """About ``n_tokens`` tokens of consecutive text from a random start (binary search on words)."""
        n_tokens = max(1, int(n_tokens))
        start = rng.randrange(len(self.words))
        seq = (self.words * (2 + n_tokens // max(1, len(self.words))))[start:]
        lo, hi = 1, min(len(seq), 2 * n_tokens + 8)
        while lo < hi:  # smallest word count whose token count reaches the target
            mid = (lo + hi) // 2
            if self.count_tokens(" ".join(seq[:mid])) >= n_tokens:
                hi = mid
            else:
                lo = mid + 1
        return " ".join(seq[:lo])


def tokenizer_counter(model: str | None) -> Callable[[str], int] | None:
    """A token counter from the model folder's tokenizer (transformers), or None."""
    if not model or not Path(model).is_dir():
        return None
    try:
        from transformers import AutoTokenizer  # type: ignore

        tok = AutoTokenizer.from_pretrained(model)
        return lambda s: len(tok(s, add_special_tokens=False)["input_ids"])
    except Exception:  # noqa: BLE001
        return None


# ---- presets ----------------------------------------------------------------------------------
def _r(n: int, scale: float) -> int:
    return max(1, int(round(n * scale)))


def _len(rng: random.Random, lo: int, hi: int, scale: float) -> int:
    return max(1, int(round(rng.randint(lo, hi) * scale)))


def build_workload(
    spec: str,
    text: TextSource,
    num_sessions: int = 16,
    seed: int = 0,
    scale: float = 1.0,
    turns: int = 4,
) -> Workload:
    """Build a workload from a preset name or ``file:PATH``. Raises ValueError listing valid names."""
    rng = random.Random(f"{spec}:{seed}")
    params = {"seed": seed, "scale": scale}
    if spec.startswith("file:"):
        return load_jsonl(Path(spec[5:]))
    if spec == "chat":
        sessions = [
            Session([Turn("Question: " + text.take(rng, _len(rng, 64, 192, scale)) + "\nAnswer:",
                          _len(rng, 32, 128, scale))], session_id=f"chat-{i}")
            for i in range(num_sessions)
        ]
        desc = f"short prompts ({_r(64, scale)}-{_r(192, scale)} tokens) and outputs ({_r(32, scale)}-{_r(128, scale)} tokens)"
    elif spec == "rag":
        sessions = []
        for i in range(num_sessions):
            docs = "\n\n".join(f"[doc {j}] " + text.take(rng, _len(rng, 256, 768, scale)) for j in range(3))
            q = "Question: " + text.take(rng, _len(rng, 16, 32, scale)) + "\nAnswer briefly:"
            sessions.append(Session([Turn(docs + "\n\n" + q, _len(rng, 32, 64, scale))], session_id=f"rag-{i}"))
        desc = (f"long prompts (3 passages of {_r(256, scale)}-{_r(768, scale)} tokens) and short answers "
                f"({_r(32, scale)}-{_r(64, scale)} tokens)")
    elif spec == "burst-decode":
        out = max(1, int(round(512 * scale)))
        sessions = [
            Session([Turn(text.take(rng, _len(rng, 96, 160, scale)), out, ignore_eos=True)], session_id=f"burst-{i}")
            for i in range(num_sessions)
        ]
        desc = (f"short prompts ({_r(96, scale)}-{_r(160, scale)} tokens), {out} output tokens each (ignore_eos), "
                "a level's requests all sent at once")
        params["output_len"] = out
    elif spec == "long-prompt":
        sessions = [
            Session([Turn("Read the document, then answer.\n\n" + text.take(rng, _len(rng, 16384, 32768, scale))
                          + "\n\nQuestion: who is named first in the document? Answer briefly:",
                          _len(rng, 32, 64, scale))], session_id=f"long-{i}")
            for i in range(num_sessions)
        ]
        desc = (f"long prompts ({_r(16384, scale)}-{_r(32768, scale)} tokens: chunked prefill) and short answers "
                f"({_r(32, scale)}-{_r(64, scale)} tokens)")
    elif spec == "long-context-agent":
        system = "You are a careful research agent. Background notes:\n" + text.take(rng, int(1024 * scale) or 1)
        sessions = []
        for i in range(num_sessions):
            ts = [Turn("\nObservation: " + text.take(rng, _len(rng, 128, 384, scale)) + "\nThought:",
                       _len(rng, 48, 128, scale)) for _ in range(turns)]
            sessions.append(Session(ts, prefix=system, session_id=f"agent-{i}"))
        desc = f"{turns}-turn sessions, shared ~{int(1024 * scale)}-token prefix, history grows every turn"
        params["turns"] = turns
    else:
        raise ValueError(f"unknown workload {spec!r}; valid: {', '.join(PRESET_NAMES)}, file:PATH")
    return Workload(spec, sessions, desc, params)


def needed_model_len(spec: str, scale: float = 1.0, turns: int = 4) -> int:
    """Upper bound of prompt + output tokens of one request of a preset (``--max-model-len`` must
    cover it), rounded up to a multiple of 128; 0 for ``file:`` workloads (unknown)."""
    s = scale
    need = {
        "chat": _r(192, s) + _r(128, s) + 8,
        "rag": 3 * (_r(768, s) + 8) + _r(32, s) + _r(64, s) + 16,
        "burst-decode": _r(160, s) + _r(512, s) + 8,
        "long-context-agent": int(1024 * s) + 16 + turns * (_r(384, s) + _r(128, s) + 8),
        "long-prompt": _r(32768, s) + 32 + _r(64, s) + 8,
    }.get(spec, 0)
    return -(-int(need * 1.1) // 128) * 128 if need else 0


def load_jsonl(path: Path) -> Workload:
    """Read a JSONL request file (see module docstring)."""
    if not path.is_file():
        raise ValueError(f"workload file not found: {path}")
    order: list[str] = []
    by_session: dict[str, list[Turn]] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            turn = Turn(str(obj["prompt"]), int(obj.get("max_tokens", 128)), bool(obj.get("ignore_eos", False)))
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"{path}:{n}: need {{'prompt': str, 'max_tokens': int}}: {e}") from e
        sid = str(obj.get("session", f"line-{n}"))
        if sid not in by_session:
            order.append(sid)
            by_session[sid] = []
        by_session[sid].append(turn)
    if not order:
        raise ValueError(f"workload file {path} holds no requests")
    sessions = [Session(by_session[s], session_id=s) for s in order]
    return Workload(f"file:{path.name}", sessions, f"requests from {path}", {"path": str(path)})


def dump_jsonl(workload: Workload, path: Path) -> None:
    """Write a workload as JSONL (first-turn prompts include the prefix) for reuse with file:PATH."""
    with open(path, "w") as f:
        for s in workload.sessions:
            for k, t in enumerate(s.turns):
                prompt = (s.prefix + t.user_text) if k == 0 else t.user_text
                rec = {"session": s.session_id, "prompt": prompt, "max_tokens": t.max_tokens, "ignore_eos": t.ignore_eos}
                f.write(json.dumps(rec) + "\n")
