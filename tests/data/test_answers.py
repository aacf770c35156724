"""extract_answer and answers_match on the shapes of answer text models write."""

import pytest

from thinklens.data.answers import answers_match, extract_answer
from thinklens.data.procedural import builtin_prompts


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # the last \boxed wins, nested braces are matched
        (r"First \boxed{3}, then finally \boxed{\frac{3}{4}}.", r"\frac{3}{4}"),
        (r"So $\boxed{x^{2} + 1}$", "x^{2} + 1"),
        # a truncated \boxed{ at the end falls back to the last complete one
        (r"\boxed{12} and then \boxed{1", "12"),
        (r"\boxed{\text{Alice}}", "Alice"),
        # GSM8K style: text after the last ####, commas dropped from a number
        ("3 + 4 = 7 #### 7\n", "7"),
        ("#### 1,234", "1234"),
        # explicit statements
        ("The final answer is $42$.", "42"),
        ("**Answer:** 17 apples", "17"),
        ("The answer is 12 + 5 = 17.", "17"),
        ("Answer: \\frac{1}{2}", "1/2"),
        ("So the answer is Bob, since he is the tallest.", "Bob"),
        ("The answer is yes.", "yes"),
        ("the answer is the empty set.", "the empty set"),
        # a final yes/no (logic sets)
        ("Joe is younger than Tom, so no.", "no"),
        ("Is Joe older? **Yes**", "yes"),
        # the last number: int, decimal, fraction, thousands commas; '5-3' is not minus three
        ("12 + 5 = 17 apples.", "17"),
        ("It costs 3.50, then 1,234,567 in total.", "1234567"),
        ("He ate 7/8 of it", "7/8"),
        ("it drops to -4 degrees", "-4"),
        ("we compute 5-3", "3"),
        # a leading yes/no when there is no number
        ("No, Joe is not older than Tom", "no"),
        ("I cannot tell.", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("predicted", "reference", "expected"),
    [
        ("3/4", "0.75", True),  # 3/4 = 0.75
        (r"\frac{3}{4}", "3/4", True),
        ("1,234", "1234", True),
        ("12.0", "12", True),
        ("12.0000001", "12", True),  # within relative tolerance 1e-6
        ("12.01", "12", False),
        ("−5", "-5", True),  # unicode minus
        ("50%", "50", True),
        ("$42$", "42", True),
        (r"\text{Alice}.", "alice", True),
        ("  Yes. ", "yes", True),
        ("Bob", "Carol", False),
        ("x + 1", "x+1", True),  # whitespace-insensitive
        ("x+1", "x-1", False),  # but operators still count
        (None, "4", False),
        ("4", None, None),
        (None, None, None),
    ],
)
def test_answers_match(predicted, reference, expected):
    assert answers_match(predicted, reference) is expected


def test_extracted_answers_match_builtin_references():
    for record in builtin_prompts("arithmetic", 50) + builtin_prompts("logic", 50):
        # A model that writes the right answer in either common style is scored correct.
        assert answers_match(extract_answer(f"<think>...</think> \\boxed{{{record.answer}}}"), record.answer)
        assert answers_match(extract_answer(f"So the answer is {record.answer}."), record.answer)
