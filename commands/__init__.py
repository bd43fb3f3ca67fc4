"""Command-line front ends of the meta-learning loops and the robustness
suite. `run.py meta NAME ...` and `run.py robust ...` call `main(argv)` of one
module here; the algorithms themselves live in meta/, src/ and envs/."""
