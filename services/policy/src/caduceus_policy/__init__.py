"""Policy Decision Point: decides every tool call and signs the decision."""
