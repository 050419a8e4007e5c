"""The report helpers' number formatting: what a reader sees in every table."""

from __future__ import annotations

import pandas as pd

from qlora_utils.book.report import styled


def test_styled_formats_numbers_for_reading() -> None:
    frame = pd.DataFrame({"peak": [1234.5678, None], "whole": [2000.0, 3.0], "learning rate": [0.0003, 1e-05],
                          "n": [1234, 5]})
    html = styled(frame).to_html()
    for cell in (">1,234.57<", ">—<", ">2,000<", ">3<", ">0.0003<", ">1e-05<", ">1,234<"):
        assert cell in html, cell
    assert "2,000.00" not in html and "1,234.568" not in html
