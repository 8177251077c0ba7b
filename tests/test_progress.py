"""The progress a command shows: bars with counts, rate and time left on a
terminal, a few plain lines elsewhere, nothing where no display is on."""
import io

from flows import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _stages():
    for done in range(9):
        progress.show("training", done, 8, "runs")
    progress.show("report", 0, 1, "reports")
    progress.show("report", 1, 1, "reports")


def test_without_a_terminal_a_few_plain_lines_per_stage():
    out = io.StringIO()
    with progress.display(out):
        _stages()
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0].split(" in ")[0] for line in lines] == [
        "training: 0/8 runs", "training: 2/8 runs", "training: 4/8 runs", "training: 6/8 runs", "training: 8/8 runs",
        "report: 0/1 reports", "report: 1/1 reports"]
    assert lines[1].endswith(" left") and lines[4].endswith(" s")


def test_on_a_terminal_one_bar_per_stage_with_counts_rate_and_time_left():
    out = Terminal()
    with progress.display(out):
        _stages()
    final = out.getvalue().rsplit("\x1b[?25h", 1)[0]
    assert "training" in final and "8/8" in final and "runs/s" in final and "left" in final
    assert "report" in final and "1/1" in final


def test_no_display_no_output(capsys):
    _stages()
    assert capsys.readouterr() == ("", "")
