"""The contract between training/export and the service: numpy, pydantic and the tokenizer only.

`bundle` (the manifest schema and its checks), `ids` (namespacing and pseudonymous ids), `features`
(user-encoder inputs, scorer features, item-KNN candidates) and `text_inputs` (how item text becomes model
input). `training` and `app` both import this package and never each other.
"""
