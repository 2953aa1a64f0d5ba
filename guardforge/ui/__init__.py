"""The web UI: Gradio Blocks mounted in the FastAPI app at /ui."""
