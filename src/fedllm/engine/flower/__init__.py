"""Distributed federated fine-tuning on Flower (optional: ``pip install 'fedllm[flower]'``).

``node`` is the client side without Flower, ``server`` the Flower fleet/transport/evaluator, ``app``
the Flower App (ServerApp + ClientApp), ``serve`` the ServerApp's body, ``launch`` the processes of a
deployment and ``certs`` its TLS certificates and node keys."""
