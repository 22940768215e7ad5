# ruff: noqa: E501 - markup lines, as long as the rows they render
"""The model card's Markdown and HTML (jinja2; registry/model_card.py renders them). The sections follow Mitchell
et al. 2019: model details, intended use, factors, metrics, evaluation and training data, quantitative analyses,
ethical considerations, caveats and recommendations. `t` is the format's escaping filter for text, `f` a metric, `n` a feature statistic."""

MARKDOWN = """\
{% set d = card.model_details %}
# Model card: {{ d.name|t }}, version {{ d.version.name|t }}

{{ d.overview|t }}

## Model details

| | |
|---|---|
| version | {{ d.version.name|t }}, pushed {{ d.version.date|t }} |
| run | {{ x.run|t }} (why: {{ x.reason|t }}) |
| owners | {{ d.owners|map(attribute="name")|map("t")|join(", ") }} |
| license | {{ d.licenses[0].identifier|t }} |
| against the baseline | {{ d.version.diff|t }} |
| architecture | {{ card.model_parameters.model_architecture|t }} |
| input, output | {{ card.model_parameters.input_format|t }}; {{ card.model_parameters.output_format|t }} |
{% for r in d.references %}
| reference | {{ r.reference|t }} |
{% endfor %}

## Intended use

{{ x.intended_use|t }}

Users:
{% for u in card.considerations.users %}
- {{ u.description|t }}
{% endfor %}

Out of scope:
{% for u in x.out_of_scope %}
- {{ u|t }}
{% endfor %}

## Factors and metrics

TFMA on the evaluation split, overall and per slice ({{ x.slices|map(attribute="features")|map("list")|sum(start=[])|unique|map("t")|join(", ") }}).
Blessing: {{ "BLESSED" if x.blessed else "NOT BLESSED" }}.
{% for c in x.checks %}
- {{ "pass" if c.passed else "FAIL" }}: {{ c.check|t }}
{% endfor %}
{% for f in x.failures %}
- FAIL: {{ f|t }}
{% endfor %}

{% for title, prefix, summary in (("Training data", "training", x.training_data),
                                  ("Evaluation data", "evaluation", x.evaluation_data)) %}
## {{ title }}

{% for ds in card.model_parameters.data if ds.name.startswith(prefix) %}
- {{ ds.name|t }}: {{ ds.description|t }}
{% else %}
- not found in ML Metadata
{% endfor %}
{% if summary %}

The {{ summary.split|t }} split's features ({{ summary.examples }} examples; TFDV's statistics):

| feature | type | missing | mean | std dev | min | max | distinct | most frequent |
|---|---|---|---|---|---|---|---|---|
{% for ft in summary.features %}
| {{ ft.name|t }} | {{ ft.type|t }} | {{ "%.1f%%"|format(100 * ft.missing) }} | {{ ft.mean|n }} | {{ ft.std_dev|n }} | {{ ft.min|n }} | {{ ft.max|n }} | {{ ft.unique|f }} | {{ ft.top|t if ft.top is not none else "-" }} |
{% endfor %}
{% endif %}

{% endfor %}
## Quantitative analysis

| slice | {% for c in columns %}{{ metric_names[c] }} | {% endfor %}note |
|---|{% for c in columns %}---|{% endfor %}---|
{% for r in rows %}
| {{ r.slice|t }} | {% for c in columns %}{{ r.metrics.get(c)|f(c) }} | {% endfor %}{% if r.flag and r.flag.worse %}**markedly worse**{% elif r.flag and not r.flag.judged %}not judged: {{ r.flag.why|t }}{% endif %} |
{% endfor %}

{% for name in charts %}
![{{ name|t }}]({{ name }}.svg)
{% endfor %}

## Slices markedly worse than overall

AUC below overall by more than {{ x.worse_slice_margin }}, in slices of at least {{ x.min_slice_examples }} examples with both classes:
{% for s in x.worse_slices if s.worse %}
- {{ s.slice|t }}: AUC {{ s.value|f }} ({{ "%+.4f"|format(s.gap) }} against overall), {{ s.count }} examples
{% else %}
- none
{% endfor %}

## Ethical considerations

{% for e in card.considerations.ethical_considerations %}
- {{ e.name|t }} (mitigation: {{ e.mitigation_strategy|t }})
{% else %}
- none stated
{% endfor %}

## Caveats and recommendations

{% for l in card.considerations.limitations %}
- {{ l.description|t }}
{% endfor %}
{% for l in card.considerations.tradeoffs %}
- {{ l.description|t }}
{% endfor %}
"""

HTML = """\
{% set d = card.model_details %}
<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Model card: {{ d.name|t }} version {{ d.version.name|t }}</title>
<style>
body{font-family:sans-serif;max-width:72rem;margin:1rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
td:first-child,th:first-child,td:last-child,th:last-child{text-align:left}.text td{text-align:left}.worse{background:#fde2e0}
.muted{color:#777}figure{display:inline-block;margin:.5rem}svg{max-width:100%;height:auto}
</style></head><body>
<h1>Model card: {{ d.name|t }}, version {{ d.version.name|t }}</h1>
<p>{{ d.overview|t }}</p>

<h2>Model details</h2>
<table class="text">
<tr><td>version</td><td>{{ d.version.name|t }}, pushed {{ d.version.date|t }}</td></tr>
<tr><td>run</td><td>{{ x.run|t }} (why: {{ x.reason|t }})</td></tr>
<tr><td>owners</td><td>{{ d.owners|map(attribute="name")|join(", ") }}</td></tr>
<tr><td>license</td><td>{{ d.licenses[0].identifier|t }}</td></tr>
<tr><td>against the baseline</td><td>{{ d.version.diff|t }}</td></tr>
<tr><td>architecture</td><td>{{ card.model_parameters.model_architecture|t }}</td></tr>
<tr><td>input, output</td><td>{{ card.model_parameters.input_format|t }}; {{ card.model_parameters.output_format|t }}</td></tr>
{% for r in d.references %}<tr><td>reference</td><td>{{ r.reference|t }}</td></tr>
{% endfor %}
</table>

<h2>Intended use</h2>
<p>{{ x.intended_use|t }}</p>
<p>Users:</p><ul>{% for u in card.considerations.users %}<li>{{ u.description|t }}</li>{% endfor %}</ul>
<p>Out of scope:</p><ul>{% for u in x.out_of_scope %}<li>{{ u|t }}</li>{% endfor %}</ul>

<h2>Factors and metrics</h2>
<p>TFMA on the evaluation split, overall and per slice. Blessing: <b>{{ "BLESSED" if x.blessed else "NOT BLESSED" }}</b>.</p>
<ul>{% for c in x.checks %}<li>{{ "pass" if c.passed else "FAIL" }}: {{ c.check|t }}</li>{% endfor %}
{% for f in x.failures %}<li>FAIL: {{ f|t }}</li>{% endfor %}</ul>

{% for title, prefix, summary in (("Training data", "training", x.training_data),
                                  ("Evaluation data", "evaluation", x.evaluation_data)) %}
<h2>{{ title }}</h2>
<ul>{% for ds in card.model_parameters.data if ds.name.startswith(prefix) %}<li>{{ ds.name|t }}: {{ ds.description|t }}</li>{% else %}<li>not found in ML Metadata</li>{% endfor %}</ul>
{% if summary %}
<p>The {{ summary.split|t }} split's features ({{ summary.examples }} examples; TFDV's statistics):</p>
<table><tr><th>feature</th><th>type</th><th>missing</th><th>mean</th><th>std dev</th><th>min</th><th>max</th><th>distinct</th><th>most frequent</th></tr>
{% for ft in summary.features %}<tr><td>{{ ft.name|t }}</td><td>{{ ft.type|t }}</td><td>{{ "%.1f%%"|format(100 * ft.missing) }}</td><td>{{ ft.mean|n }}</td><td>{{ ft.std_dev|n }}</td><td>{{ ft.min|n }}</td><td>{{ ft.max|n }}</td><td>{{ ft.unique|f }}</td><td>{{ ft.top|t if ft.top is not none else "-" }}</td></tr>
{% endfor %}</table>
{% endif %}
{% endfor %}

<h2>Quantitative analysis</h2>
<table><tr><th>slice</th>{% for c in columns %}<th>{{ metric_names[c] }}</th>{% endfor %}<th>note</th></tr>
{% for r in rows %}<tr{% if r.flag and r.flag.worse %} class="worse"{% endif %}><td>{{ r.slice|t }}</td>{% for c in columns %}<td>{{ r.metrics.get(c)|f(c) }}</td>{% endfor %}<td>{% if r.flag and r.flag.worse %}<b>markedly worse</b>{% elif r.flag and not r.flag.judged %}<span class="muted">not judged: {{ r.flag.why|t }}</span>{% endif %}</td></tr>
{% endfor %}</table>
{% for name, svg in charts.items() %}<figure>{{ svg }}<figcaption>{{ name|t }}</figcaption></figure>
{% endfor %}

<h2>Slices markedly worse than overall</h2>
<p>AUC below overall by more than {{ x.worse_slice_margin }}, in slices of at least {{ x.min_slice_examples }} examples with both classes:</p>
<ul>{% for s in x.worse_slices if s.worse %}<li>{{ s.slice|t }}: AUC {{ s.value|f }} ({{ "%+.4f"|format(s.gap) }} against overall), {{ s.count }} examples</li>{% else %}<li>none</li>{% endfor %}</ul>

<h2>Ethical considerations</h2>
<ul>{% for e in card.considerations.ethical_considerations %}<li>{{ e.name|t }} (mitigation: {{ e.mitigation_strategy|t }})</li>{% else %}<li>none stated</li>{% endfor %}</ul>

<h2>Caveats and recommendations</h2>
<ul>{% for l in card.considerations.limitations %}<li>{{ l.description|t }}</li>{% endfor %}
{% for l in card.considerations.tradeoffs %}<li>{{ l.description|t }}</li>{% endfor %}</ul>
</body></html>
"""
