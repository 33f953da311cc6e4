"""Every reply a writer got, the refused ones too, with why each was refused: saved as response.txt
(the thinking apart, as reasoning.txt) after every reply, so a run stopped mid-script loses
nothing a model wrote."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.scripting.llm.chat import ChatReply


@dataclass(frozen=True)
class Attempt:
    part: str  # what the reply was for: "plan", "section 3 (scenes 14-21)"
    reply: ChatReply | None  # None for a note of the writer's own (a scene it trimmed)
    problems: list[str]  # why it was refused; empty when it was used
    repair: bool = False  # a repair turn (the model's earlier answer sent back with its problems)
    note: str = ""


@dataclass
class Transcript:
    attempts: list[Attempt] = field(default_factory=list)
    earlier: str = ""  # response.txt of the run this one resumes, kept in front of this run's replies

    @property
    def repairs(self) -> int:
        return sum(a.repair for a in self.attempts)

    @property
    def replies(self) -> list[ChatReply]:
        return [a.reply for a in self.attempts if a.reply is not None]

    def add(self, attempt: Attempt) -> None:
        self.attempts.append(attempt)

    def note(self, part: str, text: str) -> None:
        """Something the writer did itself, said in its place among the replies."""
        self.attempts.append(Attempt(part, None, [], note=text))

    def response_text(self) -> str:
        parts = [self.earlier.rstrip() + "\n\n===== resumed: the replies of this run follow\n"] if self.earlier else []
        for number, attempt in enumerate(self.attempts, 1):
            r = attempt.reply
            if r is None:
                parts.append(f"===== {attempt.part}: the writer\n{attempt.note}\n")
                continue
            cached = f" ({r.cached_tokens} from the prompt cache)" if r.cached_tokens else ""
            turn = "repair" if attempt.repair else "reply"
            parts.append(f"===== {attempt.part}: {turn} {number}, {r.model}, {r.prompt_tokens} prompt tokens{cached}, "
                         f"{r.completion_tokens} completion tokens, {r.seconds:.1f} s, finish: {r.finish_reason}\n")
            parts.append(r.answer.rstrip() + "\n")
            if attempt.problems:
                parts.append("----- refused:\n" + "".join(f"- {p}\n" for p in attempt.problems))
        return "\n".join(parts)

    def reasoning_text(self) -> str:
        return "\n".join(f"===== {a.part}: reply {number}\n{a.reply.reasoning.rstrip()}\n"
                         for number, a in enumerate(self.attempts, 1) if a.reply and a.reply.reasoning.strip())

    def usage(self) -> dict[str, float]:
        """Token counts and speeds of this run's replies: `tokens_per_second` over the whole calls (prompt
        reading included), `decode_tokens_per_second` over generation alone where the server timed it."""
        replies = self.replies
        prompt = sum(r.prompt_tokens for r in replies)
        cached = sum(r.cached_tokens for r in replies)
        completion = sum(r.completion_tokens for r in replies)
        seconds = sum(r.seconds for r in replies)
        decode = sum(r.decode_seconds for r in replies)
        usage = {"replies": len(replies), "prompt_tokens": prompt, "cached_prompt_tokens": cached,
                 "completion_tokens": completion, "model_seconds": round(seconds, 3),
                 "tokens_per_second": round(completion / seconds, 2) if seconds > 0 else 0.0}
        if decode > 0:
            usage["decode_tokens_per_second"] = round(completion / decode, 2)
        return usage
