module fissure.local/pause

go 1.22
