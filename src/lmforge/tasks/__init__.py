"""Fine-tuning tasks: one module per task, each a Task subclass (read, encode, head, score, record), and the registry
that --task names. Adding a task is one module and one line in TASKS (or `register` from anywhere)."""

from lmforge.errors import LmforgeError
from lmforge.tasks.base import Task
from lmforge.tasks.chat import Chat
from lmforge.tasks.classification import Classification
from lmforge.tasks.ner import TokenTagging
from lmforge.tasks.qa import QuestionAnswering
from lmforge.tasks.relation import Relation
from lmforge.tasks.seq2seq import Seq2Seq, Summarization

TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Classification(),
        TokenTagging(),
        Relation(),
        QuestionAnswering(),
        Seq2Seq(),
        Summarization(),
        Chat(),
    )  # fmt: skip
}


def register(task: Task) -> Task:
    """Adds a task under its name (a task of your own: subclass Task in your module, then register it)."""
    if not task.name:
        raise ValueError("a task needs a name: set the class attribute `name`")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The task --task names, or one line listing the known ones."""
    if name not in TASKS:
        raise LmforgeError(f"unknown task {name!r}: choose one of {', '.join(TASKS)}")
    return TASKS[name]


__all__ = ["TASKS", "Task", "get_task", "register"]
