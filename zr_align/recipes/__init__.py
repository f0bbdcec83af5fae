"""Recipes: whole jobs written as library calls over the trainers and TinyWorld (`zr-align tinyworld build`,
`build-rewards`, `demo`). They sit above every other wing; only the command line imports them."""
