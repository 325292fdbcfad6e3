"""One evolutionary run: :func:`evomerge.pipelines.evolve.run.run_evolve` drives GENOME or
Model Swarms on the population actors; ``records`` writes its history and checkpoints,
``final`` evaluates and saves the best individual at the end."""
