"""Serving DiTF features: Triton model repositories, a PyTriton feature server and its client.

    ditf triton-repo EXPORT_DIR REPO_DIR     # repository for a Triton server you run
    ditf serve EXPORT_DIR                    # Triton (bundled by nvidia-pytriton) on this machine

    from ditf_runtime.serving.client import FeatureClient
    with FeatureClient("http://127.0.0.1:8000") as client:
        src, trg = client.extract(["cat1.jpg", "cat2.jpg"])      # same FeatureMaps as local

Both servers expose the same two models, `extract` and `match` (protocol.py), so one client
talks to either. pytriton, tritonclient and ray are optional extras (`ditf-runtime[serve]`,
`ditf-runtime[ray]`), imported only by the modules that need them.
"""
