"""The reader: P(a candidate sentence states what a part of the question asks).

Retrieval finds passages *about* the question; the quote scorer (`cove.quotes`) ranks their
sentences by named features. Neither can tell a sentence that states the asked thing from one that
only mentions its subject. The reader can: a cross-encoder fine-tuned from the bundled MiniLM on
pairs made from the library's own text (`pairs`, `train`), shipped as package data
(`cross.packaged_reader`). `upr` is the alternative built from the local chat model (query
likelihood). `calibrated` maps a reader's logit to a probability with the fitted calibration.
"""
