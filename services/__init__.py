"""tailsynth services: api gateway, generator, OOD filter and trainer workers."""
