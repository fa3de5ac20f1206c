"""Rebuild docs/results.md from docs/results/results.in.md and the tables written by
configs/appendix-100class/cifar100-reduced-report.sh: each line ``{{tableN-name}}`` is replaced by that table."""

from pathlib import Path

here = Path(__file__).parent
lines = []
for line in (here / "results.in.md").read_text().splitlines():
    name = line.strip()[2:-2] if line.strip().startswith("{{") else None
    if name is None:
        lines.append(line)
        continue
    table = here / f"{name}.md"
    if not table.is_file():
        lines.append(f"*No finished runs yet (`docs/results/{name}.md` not written).*")
        continue
    body = table.read_text().splitlines()
    body = body[1:] if body and body[0].startswith("## ") else body  # the title is in the template
    lines += ["#" + b if b.startswith("### ") else b for b in body]
(here / "results.md").write_text("\n".join(lines).rstrip() + "\n")
