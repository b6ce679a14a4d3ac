r"""Plain-language definitions of the terms wfviz uses, for the app and for readers.

``GLOSSARY`` maps each term, in teaching order, to a definition of one to three sentences in
Markdown with inline ``$…$`` math (which ``st.markdown`` renders). Every term is defined at
length, with its derivation, in ``docs/theory.md``; the test suite checks that each one appears
there as a heading or in bold.

Examples
--------
>>> from wfviz.glossary import GLOSSARY, glossary_markdown
>>> list(GLOSSARY)[:3]
['Σ_X', 'd_j', 'SIC']
>>> print(glossary_markdown(["AM/GM"]).split(": ")[0])
**AM/GM**
>>> GLOSSARY["WaterSIC"].count("$") % 2   # inline math comes in pairs
0
"""

from __future__ import annotations

from collections import OrderedDict

from .errors import WfvizError

GLOSSARY: OrderedDict[str, str] = OrderedDict([
    ("Σ_X", r"The second moment $\Sigma_X = \mathbb{E}[xx^\top]$ of a layer's input over "
     r"calibration tokens (not mean-centred). It weighs weight errors: the output damage of "
     r"$\hat W$ is $\mathrm{tr}((W-\hat W)\Sigma_X(W-\hat W)^\top)$, and GPTQ's Hessian is "
     r"$H = 2\Sigma_X$."),
    ("d_j", r"The Cholesky diagonal $d_j = L_{jj}^2$ of $\Sigma_X = LL^\top$: the part of input "
     r"$j$'s variance that the inputs decided after it cannot cancel. WaterSIC's order gives "
     r"$\mathrm{Var}(X_j \mid X_{\lt j})$, GPTQ's $\mathrm{Var}(X_j \mid X_{\gt j})$; both "
     r"multiply to $\det\Sigma_X$."),
    ("SIC", r"Successive interference cancellation (error feedback): quantize one column, then "
     r"let the columns not yet decided absorb the output error it caused. With the right "
     r"Cholesky factor, each column's share of the loss is exactly its own rounding error."),
    ("AM/GM", r"The arithmetic mean of positive numbers divided by their geometric mean; it is "
     r"at least 1 and equals 1 only when all are equal. $\tfrac12\log_2(\mathrm{AM}/\mathrm{GM})$ "
     r"of $d$ is how many bits per weight GPTQ-EC loses against WaterSIC at high rate."),
    ("reverse waterfilling", r"The optimal way to spend bits on independent Gaussian "
     r"coordinates: every coordinate louder than a water level $\theta$ is coded down to "
     r"distortion $\theta$, quieter ones get no bits. For a layer the coordinates are the "
     r"eigen-directions of $\Sigma_X$, scaled by the weight variance."),
    ("water level θ", r"The common distortion $\theta$ of every coordinate that receives bits "
     r"in reverse waterfilling; coordinate $i$ gets "
     r"$R_i = \max(0, \tfrac12\log_2(\sigma^2\lambda_i/\theta))$ bits. Lowering the water buys "
     r"distortion with rate."),
    ("IT limit", r"The information-theoretic limit: the least distortion any quantizer can reach "
     r"at a given rate for Gaussian weights, given by reverse waterfilling. At high rate it is "
     r"$\sigma^2 \mathrm{GM}(\lambda) 2^{-2R}$."),
    ("high rate", r"The regime where every coordinate or column gets bits and quantization errors "
     r"are small and nearly uniform, so that distortion falls by 4× per extra bit. The simple "
     r"closed forms for WaterSIC and GPTQ-EC hold there."),
    ("WaterSIC", r"SIC in the last-to-first column order with one step $c$ in the whitened "
     r"domain (step $c/L_{jj}$ for column $j$), which is reverse waterfilling over $d$. At high "
     r"rate it sits $\tfrac12\log_2(2\pi e/12) \approx 0.2546$ bit above the IT limit in every "
     r"basis."),
    ("GPTQ", r"The standard layer-wise quantizer: SIC in the first-to-last column order with one "
     r"fixed grid of $2^b$ levels per row, so every column gets the same whole number of bits. "
     r"Its rate is counted as log-cardinality."),
    ("GPTQ-EC", r"Entropy-coded GPTQ: GPTQ's order and one step for all columns, without "
     r"clipping, with the codes' entropy as the rate. At high rate it loses "
     r"$\tfrac12\log_2(\mathrm{AM}(d)/\mathrm{GM}(d))$ bit against WaterSIC, with GPTQ's $d$."),
    ("rotation", r"An orthogonal change of basis $W \to WQ^\top$, $\Sigma_X \to Q\Sigma_X Q^\top$ "
     r"that leaves the layer's function and the IT limit unchanged but changes $d$, and with it "
     r"how well GPTQ does."),
    ("Haar", r"A rotation drawn uniformly at random from all orthogonal matrices. It flattens "
     r"$d$ towards the spectrum's mean, and its effect depends only on the eigenvalues of "
     r"$\Sigma_X$."),
    ("Hadamard", r"A randomized Hadamard rotation $H \mathrm{diag}(\pm1)/\sqrt n$ built from "
     r"$\pm1$ matrices. It flattens $d$ about as well as Haar and can be applied fast, but "
     r"needs the full $\Sigma_X$."),
    ("eigenbasis", r"The basis of the eigenvectors of $\Sigma_X$, where $d$ equals the "
     r"eigenvalues. It is the worst basis for GPTQ: there $\mathrm{AM}(d)$ is as large as it "
     r"can be."),
    ("act-order", r"GPTQ's heuristic of deciding the columns in order of descending "
     r"$\Sigma_{jj}$. It is a permutation, so it changes $d$ as a rotation does."),
    ("rate metric", r"The rule that turned codes into a number of bits per weight. wfviz "
     r"labels every rate with its metric, because the metrics disagree, most of all with few "
     r"rows."),
    ("log_cardinality", r"Rate metric: $\log_2$ of the number of grid levels plus side "
     r"information, the '4-bit' of fixed grids. It ignores how often each level is used."),
    ("column_entropy", r"Rate metric: the empirical entropy of each column's codes, averaged, "
     r"plus side information. With few rows it reads low, by about "
     r"$(K-1)/(2a\ln 2)$ bits for $K$ levels and $a$ rows, and more at high rate."),
    ("pooled_entropy", r"Rate metric: the empirical entropy of all codes in one histogram, plus "
     r"side information, as the WaterSIC paper counts. It charges for mixing columns of different "
     r"scales, so it reads higher than the per-column entropy."),
    ("coded_bits", r"Rate metric: the length of a real ANS bitstream that is decoded again and "
     r"checked, with each column's table of counts included. With few rows the tables dominate "
     r"and it reads high."),
    ("parametric_coded", r"Rate metric: a real ANS bitstream per column under a fitted "
     r"quantized Gaussian or Laplace model, whichever is shorter, with 16 bits per model "
     r"parameter. Its overhead is $O(1/a)$ and does not grow with the rate."),
    ("side information", r"Everything besides the codes that the decoder needs, such as scales "
     r"and model parameters, charged at 16 bits per number. A number per column costs $16/a$ "
     r"bits per weight, a number per row $16/n$."),
    ("entropy power", r"$N = 2^{2h}/(2\pi e)$ for a differential entropy $h$ in bits: the "
     r"variance of the Gaussian that is as unpredictable. It replaces the variance in the "
     r"high-rate formulas for real, non-Gaussian weights."),
    ("dead feature", r"An input channel that (almost) never carries energy: wfviz flags channel "
     r"$j$ when $\Sigma_{jj} \le 10^{-3} \mathrm{median}(\mathrm{diag} \Sigma_X)$. Its weights "
     r"cost nothing, which holds in every basis only if the null space is removed before "
     r"rotating."),
    ("damping", r"A small multiple of the mean diagonal added to $\Sigma_X$ so that its Cholesky "
     r"factor exists. It makes the quantizer optimise a slightly wrong loss, at most "
     r"$\tfrac12 \mathrm{mean}_i\log_2(1 + \delta m/\lambda_i)$ bit at high rate."),
    ("perplexity", r"$\exp$ of the mean negative log-likelihood per token on evaluation text; "
     r"lower is better. A small change $\Delta\mathrm{NLL}$ changes it by about "
     r"$\mathrm{PPL}\cdot\Delta\mathrm{NLL}$."),
    ("KL divergence", r"The mean over tokens of $\mathrm{KL}(p_{\mathrm{ref}} \Vert p_q)$ "
     r"between the reference model's next-token distribution and the quantized model's. It is "
     r"never negative and sees smaller damage than perplexity."),
    ("sensitivity s_l", r"How much the model's loss grows per unit of output-error energy in "
     r"layer $l$, so that $\Delta\mathrm{NLL} \approx \sum_l s_l a_l n_l D_l$. It is measured by "
     r"injecting noise or from squared gradients (Fisher); $s_l = 1$ is the plain-MSE baseline."),
    ("bit budget", r"The total number of bits for all quantized weights of a model, or its "
     r"average per weight. Waterfilling it across layers gives layer $l$ "
     r"$R_l = \max(0, \tfrac12\log_2(s_l\kappa_l/\theta))$ bits."),
    ("greedy controller", r"The WaterSIC authors' rule for a model's budget: each layer, in "
     r"processing order, gets the remaining bits divided by the remaining weights. It amounts to "
     r"equal rates and ignores how much each layer matters."),
    ("one-shot calibration", r"Measuring every layer's $\Sigma_X$ on the unquantized model in "
     r"one pass, so layers can be quantized independently."),
    ("sequential calibration", r"Measuring each layer's $\Sigma_X$ on the model whose earlier "
     r"layers are already quantized, so that each layer is fitted to the inputs it will really "
     r"see."),
])
"""Term → definition (Markdown with inline ``$…$``), in the order a newcomer meets them."""


def glossary_markdown(terms=None) -> str:
    """The glossary (or the listed ``terms``) as Markdown, one ``**term**: definition`` a line.

    Parameters
    ----------
    terms : iterable of str, optional
        Terms of :data:`GLOSSARY` to include, in the order given; all of them by default.

    Returns
    -------
    str
        Lines separated by blank lines, so each renders as its own paragraph.

    Raises
    ------
    WfvizError
        If a term is not in the glossary.

    Examples
    --------
    >>> print(glossary_markdown(["SIC"]).split(":")[0])
    **SIC**
    """
    chosen = list(GLOSSARY) if terms is None else list(terms)
    unknown = [t for t in chosen if t not in GLOSSARY]
    if unknown:
        raise WfvizError(f"Unknown glossary term(s) {', '.join(map(repr, unknown))}; choose from "
                         f"{', '.join(GLOSSARY)}.")
    return "\n\n".join(f"**{term}**: {GLOSSARY[term]}" for term in chosen)
