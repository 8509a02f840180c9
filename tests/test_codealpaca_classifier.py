"""Fed-CodeAlpaca's keyword classifier on a labelled sample in CodeAlpaca's own format (instruction,
input, output): its precision per language is measured here, and the rows real data misfiled are in it
(Python answers with `document.`/`=>`/`function (` in them, Visual Basic's Console.WriteLine, an
Objective-C program, Java's Integer.parseInt)."""

from __future__ import annotations

from collections import Counter, defaultdict

from fedllm.data.sources.fs_llm import classify_language

LABELLED = [  # (instruction, input, output, true language)
    ("Write a function to scrape the title of a page.", "",
     "def get_title(html):\n    # like document.title in a browser\n    soup = BeautifulSoup(html)\n    return soup.title.string", "Python"),
    ("Sort the list of pairs by their second element.", "pairs = [(1, 'b'), (2, 'a')]",
     "def sort_pairs(pairs):\n    return sorted(pairs, key=lambda p: p[1])  # p => p[1]", "Python"),
    ("Explain the function and fix it.", "",
     "The function\n(shown below) was missing a return.\ndef add(a, b):\n    return a + b", "Python"),
    ("Check whether a number is even.", "", "def is_even(n):\n    if n % 2 == 0:\n        return True\n    return False", "Python"),
    ("Print the numbers from 1 to 10.", "", "for i in range(1, 11):\n    print(i)", "Python"),
    ("Print Hello World.", "", "Module Hello\n    Sub Main()\n        Console.WriteLine(\"Hello World\")\n    End Sub\nEnd Module", "Visual Basic"),
    ("Print Hello World.", "", "using System;\nclass Program {\n    static void Main() {\n        Console.WriteLine(\"Hello World\");\n    }\n}", "C#"),
    ("Write a program that logs a greeting.", "",
     "#import <Foundation/Foundation.h>\nint main() {\n    NSLog(@\"Hello\");\n    return 0;\n}", "Objective-C"),
    ("Write a program that prints a greeting.", "", "#include <stdio.h>\nint main() {\n    printf(\"Hello\");\n    return 0;\n}", "C"),
    ("Convert the string to an integer.", "String s = \"42\";", "int n = Integer.parseInt(s);", "Java"),
    ("Write a method that adds two numbers.", "",
     "public static int add(int a, int b) {\n    return a + b;\n}", "Java"),
    ("Print the sum.", "", "#include <iostream>\nint main() {\n    std::cout << 1 + 2;\n}", "C++"),
    ("Add a click handler.", "", "document.getElementById('b').addEventListener('click', () => alert('hi'));", "JavaScript"),
    ("Double every element.", "", "const doubled = arr.map(x => x * 2);", "JavaScript"),
    ("Write a function that greets.", "", "function greet(name) {\n  return 'Hello ' + name;\n}", "JavaScript"),
    ("Print a greeting.", "", "<?php\necho \"Hello\";\n?>", "PHP"),
    ("Print a greeting.", "", "puts \"Hello\"", "Ruby"),
    ("Print a greeting.", "", "package main\nimport \"fmt\"\nfunc main() {\n    fmt.Println(\"Hello\")\n}", "Go"),
    ("Write a Python function to reverse a string.", "", "return s[::-1]", "Python"),
    ("Write a JavaScript function that reverses a string.", "", "str.split('').reverse().join('')", "JavaScript"),
]


def test_classifier_precision_on_a_labelled_sample() -> None:
    confusion: dict[str, Counter[str]] = defaultdict(Counter)
    for instruction, extra, output, truth in LABELLED:
        confusion[classify_language(instruction, extra, output)][truth] += 1
    precision = {pred: row[pred] / sum(row.values()) for pred, row in confusion.items() if pred not in ("none", "ambiguous")}
    wrong = {pred: dict(row) for pred, row in confusion.items() if set(row) != {pred}}
    assert not wrong, f"predicted -> true counts where the classifier misfiled: {wrong}"
    assert all(p == 1.0 for p in precision.values()) and len(precision) >= 10


def test_the_build_manifest_reports_the_classifiers_confusion(tmp_path) -> None:
    import json

    from fedllm.data.sources import get_source

    rows = [{"instruction": i, "input": x, "output": o} for i, x, o, _ in LABELLED]
    data = tmp_path / "code_alpaca.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = get_source("fed-codealpaca").build(tmp_path / "c", data_files=str(data), progress=False)
    man = json.loads((path.parent / "manifest.json").read_text())
    also = man["classifier"]["filed_with_other_markers"]
    assert also["Python"]["JavaScript"] >= 1  # the Python answer that mentions `document.title`
    assert man["dropped_rows"]["language_not_selected"] == 2  # Visual Basic and Objective-C are not CodeAlpaca's nine
    # with the language given (FS-LLM's rosetta_alpaca.json: `input` is the language), a true confusion matrix
    labelled = [{"instruction": i, "input": t, "output": o} for i, _, o, t in LABELLED]
    data2 = tmp_path / "rosetta_alpaca.json"
    data2.write_text(json.dumps(labelled))
    path = get_source("fed-codealpaca").build(tmp_path / "c", data_files=str(data2), language_from="input", progress=False)
    rep = json.loads((path.parent / "manifest.json").read_text())["classifier"]
    assert rep["confusion"]["Visual Basic"] == {"Visual Basic": 1} and rep["precision"]["Python"] == 1.0
