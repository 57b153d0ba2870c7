from __future__ import annotations

import pytest
import torch

from captioner.models.decoders import DecoderConfig, build_decoder


def config(decoder: str, **options) -> DecoderConfig:
    if decoder == "transformer":
        options = {"num_layers": 2, "num_heads": 2, **options}
    options = {"drop_prob": 0.0, **options}
    return DecoderConfig(decoder, vocab_size=20, feature_dim=8, embed_size=6, hidden_size=10, attention_dim=7,
                         **options)


CONCEPTS = [{"num_concepts": 9, "concept_input": way, "concept_top_k": 4} for way in ("project", "attend")]
READING_CONCEPTS = [(decoder, {**concepts, "deep_output": decoder == "attention"})
                    for decoder in ("lstm", "gru", "attention", "transformer") for concepts in CONCEPTS]


@pytest.mark.parametrize("decoder, options", [("lstm", {}), ("gru", {}), ("lstm", {"image_init": "state"}),
                                              ("gru", {"num_layers": 2}), ("attention", {}),
                                              ("attention", {"deep_output": True, "embed_dropout": 0.5}),
                                              ("transformer", {}), ("transformer", {"num_layers": 1}),
                                              *READING_CONCEPTS, ("attention", CONCEPTS[1])])
def test_step_interface_matches_teacher_forcing(decoder: str, options: dict) -> None:
    """Running step() word by word gives the same logits as the teacher-forced forward pass."""
    torch.manual_seed(0)
    model = build_decoder(config(decoder, **options)).eval()
    features = torch.randn(3, 5, 8) if model.uses_grid else torch.randn(3, 8)
    captions = torch.randint(4, 20, (3, 6))
    captions[:, 0] = 1
    forced, alphas = model(features, captions)
    assert forced.shape == (3, 5, 20)
    state = model.start(features)
    for t in range(5):
        logits, state, alpha = model.step(captions[:, t], state)
        torch.testing.assert_close(logits, forced[:, t], atol=1e-5, rtol=1e-5)
        if alphas is not None:
            torch.testing.assert_close(alpha, alphas[:, t])
        if model.uses_grid:
            assert alpha.shape == (3, 5)  # the grid's regions, never the concept tokens
            torch.testing.assert_close(alpha.sum(1), torch.ones(3))


def test_select_reorders_every_state_tensor() -> None:
    model = build_decoder(config("attention")).eval()
    state = model.start(torch.randn(2, 5, 8))
    picked = model.select(state, torch.tensor([1, 1, 0]))
    assert all(value.shape[0] == 3 for value in picked.values())
    torch.testing.assert_close(picked["h"][2], state["h"][0])


@pytest.mark.parametrize("decoder, options", [("attention", {"deep_output": True}), ("lstm", {}), ("transformer", {}),
                                              *READING_CONCEPTS])
def test_rows_per_image_step_like_copies_of_the_image(decoder: str, options: dict) -> None:
    """Beams (or samples) sharing their image's features decode exactly as if each had its own copy."""
    torch.manual_seed(0)
    model = build_decoder(config(decoder, **options)).eval()
    features = torch.randn(2, 5, 8) if model.uses_grid else torch.randn(2, 8)
    shared = model.with_rows_per_image(model.start(features), 3)
    copied = model.start(features.repeat_interleave(3, dim=0))
    for name in model.per_image_state:
        if name in shared:
            assert shared[name].shape[0] == 2  # not copied
    tokens = torch.randint(4, 20, (6,))
    for _ in range(3):
        shared_logits, shared, shared_alpha = model.step(tokens, shared)
        copied_logits, copied, copied_alpha = model.step(tokens, copied)
        torch.testing.assert_close(shared_logits, copied_logits)
        if model.uses_grid:
            torch.testing.assert_close(shared_alpha, copied_alpha)
        tokens = shared_logits.argmax(1)
    # keeping image 1 only: its rows 3..5 and its own entries
    kept = model.select(shared, torch.tensor([3, 4, 5]), torch.tensor([1]))
    torch.testing.assert_close(model.step(tokens[3:], kept)[0], model.step(tokens, shared)[0][3:])
    if model.uses_grid:
        with pytest.raises(ValueError, match="several rows per image"):
            model.select(shared, torch.tensor([3, 4, 5]))


@pytest.mark.parametrize("options", [{"deep_output": False}, {"deep_output": True},
                                     *({**concepts, "deep_output": True} for concepts in CONCEPTS)])
def test_training_pass_gradients_equal_those_of_the_step_by_step_pass(options: dict) -> None:
    """forward() computes the recurrent weights' gradients its own way (SharedWeight); they must be the same."""
    torch.manual_seed(0)
    model = build_decoder(config("attention", **options)).eval()
    features = torch.randn(3, 5, 8)
    captions = torch.randint(4, 20, (3, 6))
    logits, _ = model(features, captions)
    forced = torch.autograd.grad(logits.square().sum(), list(model.parameters()), allow_unused=True)
    state, stepped = model.start(features), []
    for t in range(5):
        step_logits, state, _ = model.step(captions[:, t], state)
        stepped.append(step_logits)
    reference = torch.autograd.grad(torch.stack(stepped, 1).square().sum(), list(model.parameters()), allow_unused=True)
    for (name, _), got, want in zip(model.named_parameters(), forced, reference):
        torch.testing.assert_close(got, want, msg=name)


def test_deep_output_reads_the_attended_context_and_the_previous_word() -> None:
    """With deep_output the logits change when only the context or only the previous word changes; the plain
    attention decoder's logits depend on h alone."""
    torch.manual_seed(0)
    model = build_decoder(config("attention", deep_output=True)).eval()
    h, context, words = torch.randn(2, 10), torch.randn(2, 8), torch.randn(2, 6)
    base = model._logits(h, context, words, dropout=False)
    assert not torch.allclose(base, model._logits(h, context + 1, words, dropout=False))
    assert not torch.allclose(base, model._logits(h, context, words + 1, dropout=False))
    plain = build_decoder(config("attention")).eval()
    torch.testing.assert_close(plain._logits(h, context, words, dropout=False),
                               plain._logits(h, context + 1, words + 1, dropout=False))


def test_decoding_attends_in_pieces_exactly_as_in_one_go(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without gradients on a CPU the energies are computed a few images at a time; one image per piece
    must give what the whole batch at once (the training path) gives, to float32 rounding: bit for bit on an
    Intel Xeon, within a few 1e-8 on an AMD EPYC, where the matrix-vector kernels sum in another order for
    other shapes."""
    from captioner.models import soft_attention

    torch.manual_seed(0)
    model = build_decoder(config("attention", deep_output=True)).eval()
    state = model.with_rows_per_image(model.start(torch.randn(4, 5, 8)), 3)
    tokens = torch.randint(4, 20, (12,))
    whole_logits, _, whole_alpha = model.step(tokens, state)  # gradients on: one go
    monkeypatch.setattr(soft_attention, "ENERGY_CHUNK_ELEMENTS", 1)
    with torch.no_grad():
        logits, _, alpha = model.step(tokens, state)
    torch.testing.assert_close(logits, whole_logits.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(alpha, whole_alpha.detach(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("grad", [True, False])
def test_attention_weights_are_xu_et_al_soft_attention(grad: bool) -> None:
    """The energies are computed with a sigmoid for speed; the weights must still be Xu et al.'s
    softmax over the regions of w . tanh(W_a features + U_a h), with and without gradients."""
    torch.manual_seed(0)
    model = build_decoder(config("attention")).eval()
    features = torch.randn(3, 5, 8)
    state = model.start(features)
    query = model.from_hidden(state["h"])[:, :7]  # the attention query is the first attention_dim outputs
    energies = torch.tanh(model.feature_attention(features) + query.unsqueeze(1)) @ model.attention_score.weight.T
    expected = torch.softmax(energies.squeeze(-1), dim=1)
    with torch.set_grad_enabled(grad):
        _, _, alpha = model.step(torch.randint(4, 20, (3,)), state)
    torch.testing.assert_close(alpha, expected.detach(), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(alpha, torch.full_like(alpha, 0.2))  # the weights really depend on the regions


@pytest.mark.parametrize("decoder, options", READING_CONCEPTS)
def test_decoders_reading_concepts_caption_by_the_predicted_concepts(decoder: str, options: dict) -> None:
    """The captions change with what the head predicts, and no caption gradient reaches the head (it learns
    from its own loss)."""
    torch.manual_seed(0)
    model = build_decoder(config(decoder, **options)).eval()
    features = torch.randn(2, 5, 8) if model.uses_grid else torch.randn(2, 8)
    captions = torch.randint(4, 20, (2, 6))
    logits, _ = model(features, captions)
    logits.square().sum().backward()
    assert all(p.grad is None for p in model.concept_head.parameters())
    with torch.no_grad():
        model.concept_head.classify.bias.add_(torch.linspace(-5, 5, 9))
    assert not torch.allclose(model(features, captions)[0], logits)


def test_reading_concepts_needs_a_head_and_a_known_way() -> None:
    with pytest.raises(ValueError, match="needs a concept head"):
        build_decoder(config("gru", concept_input="project"))
    with pytest.raises(ValueError, match="unknown concept input"):
        build_decoder(config("gru", num_concepts=3, concept_input="both"))


def test_transformer_dropout_belongs_to_the_teacher_forced_pass_only() -> None:
    """In training mode forward() drops out (two passes differ) while step() reads the whole model, as in eval
    mode: what self-critical training samples from is the model that decodes."""
    torch.manual_seed(0)
    model = build_decoder(config("transformer", drop_prob=0.3)).train()
    features, captions = torch.randn(2, 5, 8), torch.randint(4, 20, (2, 6))
    assert not torch.allclose(model(features, captions)[0], model(features, captions)[0])
    tokens = captions[:, 0]
    training_logits = model.step(tokens, model.start(features))[0]
    model.eval()
    torch.testing.assert_close(training_logits, model.step(tokens, model.start(features))[0])


def test_transformer_ties_its_output_to_the_word_embeddings_and_checks_its_heads() -> None:
    model = build_decoder(config("transformer"))
    assert model.output.weight is model.embed.weight
    with pytest.raises(ValueError, match="multiple of the number of heads"):
        build_decoder(config("transformer", num_heads=3))
