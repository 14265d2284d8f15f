"""The answer engine: retrieve -> coverage -> draft -> verify -> compose, each a visible stage.

    engine = AnswerEngine(settings)
    answer = engine.ask("Which optimizer trained the paper's largest model?", on_event=print)
    answer.to_json()

One module per stage, each a function of the engine's shared parts and one `AskContext` (the
meter, the events sink, the deadline and cancel signal, the analysed question), passing the
dataclasses of `cove.engine.model`, so each can be run and tested alone:

1. `retrieve`: hybrid search for a stand-alone query; the hits become numbered `Evidence`.
2. `coverage`: does the library say anything about this? The question is cut into its parts
   (`cove.question`); a question about something no passage mentions is refused here. The best
   checked sentences of the first retrieval then go out as `FirstQuotes`.
3. `draft`: the model answers from the numbered sources; every sentence is checked
   (`cove.checks`). The draft streams as a draft, never as the answer.
4. `strategies`: how the checked draft becomes the answer. `SingleShot` composes it with the first
   retrieval; `CoVe` verifies first (factored chain-of-verification: each part and claim against
   its own retrieval, `cove.verify`) and revises from the verified facts.
5. `compose`: the answer policy (`cove.compose`) and the answer's JSON: citations, corrections.

Progress flows out as typed events (`cove.events`): the CLI, the app and the API draw the same steps.
"""

from cove.engine.context import AnswerCancelled, AnswerDeadline, AskContext, Meter
from cove.engine.draft import bounded_history, excerpt
from cove.engine.engine import AnswerEngine
from cove.engine.model import REFUSAL, Answer, Citation, citation_url

__all__ = [
    "REFUSAL", "Answer", "AnswerCancelled", "AnswerDeadline", "AnswerEngine", "AskContext", "Citation", "Meter",
    "bounded_history", "citation_url", "excerpt",
]  # fmt: skip
